"""Photon OS on the local outputs (image-builder's build-node-ova-local[-base|-vmx]-photon-{4,5}): no disk
image of ours, so the qemu build installs the vendor's ISO (osinfo LocalBase "installer") with the same
boot command and kickstart as vSphere's (installer.py), then runs the roles as every qemu cell does. The
cells plan, render, pass `packer validate` and `packer fmt`, and the build step writes the kickstart with
the build user's key; no test downloads the ISO (packages.vmware.com)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_provider_folders import MINOR, cli

from imagebuilder import installer, osinfo
from imagebuilder.build import Job
from imagebuilder.clouds import registry
from imagebuilder.config import PROJECT_ROOT, load_matrix
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell, plan
from imagebuilder.targets import target_of

OS_IDS = ("photon-4", "photon-5")
ISOS = {"photon-4": osinfo.PHOTON_4_ISO, "photon-5": osinfo.PHOTON_5_ISO}
FLAVOURS = ["base", "vmx", "efi", "base-efi", "vmx-efi"]


def write_matrix(path: Path, qemu: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({
        "versions_file": str(PROJECT_ROOT / "versions.lock.yaml"), "os": list(OS_IDS), "kubernetes": [MINOR],
        "clouds": {"qemu": {"boot_test": False, **(qemu or {})}, "ova": {"boot_test": False, "variants": FLAVOURS}},
    }))
    return path


@pytest.fixture()
def cells(tmp_path: Path) -> dict[str, Cell]:
    return {cell.id: cell for cell in plan(load_matrix(write_matrix(tmp_path / "matrix.yaml")))}


def cell_id(cloud: str, os_id: str, variant: str | None = None) -> str:
    return f"{cloud}-{os_id}{'-' + variant if variant else ''}-k8s-{MINOR}"


def test_photons_local_cells_plan_from_the_vendors_iso_as_image_builders_targets(cells: dict[str, Cell]) -> None:
    for os_id in OS_IDS:
        for cloud in ("qemu", "ova"):
            # The reference vSphere installs from, its checksum as pinned; nothing to resolve.
            assert cells[cell_id(cloud, os_id)].base_image == ISOS[os_id] == osinfo.OPERATING_SYSTEMS[os_id].image(
                "vsphere", "amd64")
            assert cells[cell_id(cloud, os_id)].base_source == {}
        base = cells[cell_id("ova", os_id, "base")]
        assert cells[cell_id("ova", os_id, "vmx")].base_image == {"source": "variant", "variant": "base",
                                                                  "cell": base.id, "build_key": base.build_key}
    names = {target_of(cell) for cell in cells.values() if cell.cloud == "ova" and "efi" not in (cell.variant or "")}
    assert names == {f"build-node-ova-local{flavour}-{os_id}" for os_id in OS_IDS for flavour in ("", "-base", "-vmx")}
    assert names <= set((PROJECT_ROOT / "tests" / "data" / "image_builder_targets.txt").read_text().split())
    # No -cloudimg alias: image-builder's qemu -cloudimg builds start from a cloud image, which Photon lacks.
    assert registry.get("qemu").image_builder_targets("photon-5", "amd64", None) == ("build-qemu-photon-5",)


def test_the_efi_variants_stay_refused_with_no_builder_to_switch_to(cells: dict[str, Cell]) -> None:
    for variant in ("efi", "base-efi", "vmx-efi"):
        reason = registry.get("ova").variant_unbuilt(cells[cell_id("ova", "photon-4", variant)])
        assert reason is not None and "\n" not in reason and "builder:" not in reason
        assert reason.endswith(f"| fix: exclude {{cloud: ova, os: photon-4, variant: {variant}}}")
    for variant in (None, "base", "vmx"):
        assert registry.get("ova").variant_unbuilt(cells[cell_id("ova", "photon-5", variant)]) is None


@pytest.mark.skipif(shutil.which("packer") is None, reason="needs packer")
def test_the_iso_install_renders_the_installers_boot_and_passes_packer_validate(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml")
    chosen = [cell_id("qemu", "photon-4"), cell_id("qemu", "photon-5"), cell_id("ova", "photon-4", "base"),
              cell_id("ova", "photon-5", "vmx")]
    out = tmp_path / "out"
    result = cli("validate", "-m", str(matrix), "--offline", "-o", str(out),
                 *[arg for name in chosen for arg in ("--only", name)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok ")) == sorted(chosen)
    for name in chosen:
        fmt = subprocess.run(["packer", "fmt", "-check", "-diff", "."], cwd=out / name, capture_output=True, text=True)
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    for os_id, name in (("photon-4", chosen[0]), ("photon-5", chosen[1]), ("photon-4", chosen[2])):
        hcl = next((out / name).glob("[oq]*.pkr.hcl")).read_text()
        assert "disk_image       = false" in hcl and 'http_directory   = "${path.root}/base/seed"' in hcl
        assert "boot_command     = var.qemu_boot_command" in hcl and "cd_files" not in hcl
        # The install's build user and its seed go before the image is sealed, as on vSphere.
        assert installer.remove_build_user("shutdown -P now").replace('"', '\\"') in hcl
        variables = (out / name / "cell.auto.pkrvars.hcl").read_text()
        boot = list(installer.installer_for(osinfo.OPERATING_SYSTEMS[os_id], "vsphere").boot_command)
        assert f"qemu_boot_command = {json.dumps(boot)}" in variables  # the installer's, not a copy
        assert f'qemu_iso_url      = "{ISOS[os_id]["iso_url"]}"' in variables
        assert f'qemu_iso_checksum = "{ISOS[os_id]["iso_checksum"]}"' in variables
        assert f'ssh_username       = "{installer.BUILD_USER}"' in variables
    assert 'provisioner "ansible"' in (out / chosen[0] / "qemu.pkr.hcl").read_text()
    assert 'provisioner "ansible"' not in (out / chosen[2] / "ova.pkr.hcl").read_text()  # the OS alone
    vmx = (out / chosen[3] / "ova.pkr.hcl").read_text()  # boots the base OVA's disk, with its own bootloader
    assert "disk_image       = true" in vmx and "iso_checksum     = var.qemu_base_checksum" in vmx
    assert 'provisioner "ansible"' in vmx and "boot_command" not in vmx


def test_the_build_step_writes_the_installers_kickstart_with_the_build_users_key(
        tmp_path: Path, cells: dict[str, Cell], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEBUILDER_QEMU_ACCEL", "tcg")  # no KVM probe
    for os_id in OS_IDS:
        cell = cells[cell_id("qemu", os_id)]
        job = Job(cell=cell, directory=tmp_path / cell.id, estimate=1.0)
        registry.get("qemu").prepare(job)
        assert job.builder == "packer" and job.packer_args == ["-var", "qemu_accelerator=tcg"]
        public = (job.directory / installer.KEY_FILE).with_suffix(".pub").read_text().strip()
        seed = job.directory / installer.HTTP_DIRECTORY
        assert sorted(path.name for path in seed.iterdir()) == [installer.PHOTON_KICKSTART]
        written = (seed / installer.PHOTON_KICKSTART).read_text()
        assert written == installer.photon_files(cell.os_info, public, [], f"build-{cell.id}")[installer.PHOTON_KICKSTART]
        script = json.loads(written)["postinstall"]
        assert f"echo '{public}' > /home/{installer.BUILD_USER}/.ssh/authorized_keys" in script
        assert not (job.directory / "base" / "disk.img").exists()  # Packer fetches the ISO itself


def test_the_offline_builder_cannot_install_an_iso_in_one_line(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", {"builder": "offline"})
    cell = next(c for c in plan(load_matrix(matrix)) if c.id == cell_id("qemu", "photon-5"))
    with pytest.raises(UserError) as caught:
        registry.get("qemu").prepare(Job(cell=cell, directory=tmp_path / cell.id, estimate=1.0))
    assert "\n" not in str(caught.value) and "builder: packer" in str(caught.value)
    assert not (tmp_path / cell.id / installer.HTTP_DIRECTORY).exists()
