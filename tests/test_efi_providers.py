"""The efi variants of the ISO-installed clouds: vSphere's `efi`, `clone-efi` and `base-efi` (vsphere-iso's
and vsphere-clone's `firmware = "efi"`, the flavour and the firmware combined in one variant name) and
Proxmox's `efi` (the proxmox plugin's `bios = "ovmf"` and `efi_config`). They render, pass `packer
validate` with the installed Packer (1.6.6) without credentials, come out under image-builder's `-efi`
target names, and are refused before Packer in one line where they cannot be what their names say."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_provider_folders import MINOR, PROXMOX, VSPHERE, cli, write_matrix
from test_render import load_hcl

from imagebuilder.clouds import registry
from imagebuilder.config import load_matrix
from imagebuilder.planner import plan
from imagebuilder.render import render_cells

VARIANTS = ["efi", "clone-efi", "base-efi", "clone", "base"]


@pytest.fixture()
def matrix(tmp_path: Path) -> Path:
    key = tmp_path / "template-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return write_matrix(tmp_path / "matrix.yaml", {
        "node-ova-vsphere": {**VSPHERE, "variants": VARIANTS, "template_ssh_key": str(key)},
        "proxmox": {**PROXMOX, "variants": ["efi"], "efi_storage_pool": "local-zfs"}},
        os_ids=["ubuntu-2404", "rockylinux-9"], exclude=[{"os": "rockylinux-9", "variant": "*efi"}])


def cell_dir(out: Path, cell: str) -> Path:
    return out / f"{cell}-k8s-{MINOR}"


@pytest.mark.skipif(shutil.which("packer") is None, reason="needs packer")
def test_the_efi_cells_pass_packer_validate_and_say_efi(matrix: Path) -> None:
    out = matrix.parent / "out"
    result = cli("validate", "-m", str(matrix), "--offline", "-o", str(out), "--only", "*ubuntu-2404*efi*",
                 cwd=matrix.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    validated = sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok "))
    assert validated == sorted(f"{cell}-k8s-{MINOR}" for cell in (
        "vsphere-ubuntu-2404-efi", "vsphere-ubuntu-2404-clone-efi", "vsphere-ubuntu-2404-base-efi",
        "proxmox-ubuntu-2404-efi")), result.stdout
    for cell in out.iterdir():
        fmt = subprocess.run(["packer", "fmt", "-check", "-diff", str(cell)], capture_output=True, text=True)
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr

    def source(cell: str, builder: str) -> dict:
        return load_hcl((cell_dir(out, cell) / f"{cell.split('-')[0]}.pkr.hcl").read_text())["source"][0][builder]["node"]

    def variables(cell: str) -> dict:
        return load_hcl((cell_dir(out, cell) / "cell.auto.pkrvars.hcl").read_text())

    iso, clone, base = (source(f"vsphere-ubuntu-2404-{name}", builder) for name, builder in
                        (("efi", "vsphere-iso"), ("clone-efi", "vsphere-clone"), ("base-efi", "vsphere-iso")))
    assert iso["firmware"] == clone["firmware"] == base["firmware"] == "efi"
    assert variables("vsphere-ubuntu-2404-clone-efi")["vsphere_clone_from"] == "ubuntu-2404-base-efi"
    assert variables("vsphere-ubuntu-2404-base-efi")["image_name_prefix"] == "ubuntu-2404-base-efi-"
    # Ubuntu's ISO boots GRUB under UEFI too: the same boot command
    assert any("linux /casper/vmlinuz --- autoinstall" in key for key in
               variables("vsphere-ubuntu-2404-efi")["vsphere_boot_command"])
    # Packer 1.6.6's built-in proxmox has no bios/efi_config: rendered without them (build refuses the cell)
    assert not {"bios", "efi_config"} & set(source("proxmox-ubuntu-2404-efi", "proxmox"))


def test_the_efi_targets_are_image_builders(matrix: Path) -> None:
    result = cli("targets", "-m", str(matrix), "--format", "json", cwd=matrix.parent)
    assert result.returncode == 0, result.stderr
    found = {entry["target"]: entry["cells"] for entry in json.loads(result.stdout)}
    for target, cell in (("node-ova-vsphere-ubuntu-2404-efi", "vsphere-ubuntu-2404-efi"),
                         ("node-ova-vsphere-clone-ubuntu-2404-efi", "vsphere-ubuntu-2404-clone-efi"),
                         ("node-ova-vsphere-base-ubuntu-2404-efi", "vsphere-ubuntu-2404-base-efi"),
                         ("node-ova-vsphere-clone-ubuntu-2404", "vsphere-ubuntu-2404-clone"),
                         ("proxmox-ubuntu-2404-efi", "proxmox-ubuntu-2404-efi")):
        assert found[f"build-{target}"] == [f"{cell}-k8s-{MINOR}"]
    assert not [target for target in found if "rockylinux-9" in target and target.endswith("efi")]


def test_the_proxmox_plugin_renders_ovmf_and_an_efi_disk(matrix: Path, tmp_path: Path) -> None:
    cells = {cell.id: cell for cell in plan(load_matrix(matrix))}
    efi, bios = cells[f"proxmox-ubuntu-2404-efi-k8s-{MINOR}"], cells[f"proxmox-ubuntu-2404-k8s-{MINOR}"]
    out = {r.cell.id: r.directory for r in render_cells([efi, bios], tmp_path / "out", packer_version=None)}
    block = load_hcl((out[efi.id] / "proxmox.pkr.hcl").read_text())["source"][0]["proxmox"]["node"]
    assert block["bios"] == "ovmf"
    (efi_config,) = block["efi_config"]
    assert efi_config == {"efi_storage_pool": "${var.proxmox_efi_storage_pool}", "efi_type": "4m",
                          "pre_enrolled_keys": False}
    assert load_hcl((out[efi.id] / "cell.auto.pkrvars.hcl").read_text())["proxmox_efi_storage_pool"] == "local-zfs"
    assert "bios" not in (out[bios.id] / "proxmox.pkr.hcl").read_text()
    # the EFI disk's storage is where it goes, not what the image is
    moved = matrix.parent / "moved.yaml"
    moved.write_text(matrix.read_text().replace("efi_storage_pool: local-zfs", "efi_storage_pool: ceph"))
    assert moved.read_text() != matrix.read_text()
    assert efi.build_key == next(c for c in plan(load_matrix(moved)) if c.id == efi.id).build_key
    if shutil.which("packer"):
        fmt = subprocess.run(["packer", "fmt", "-check", "-diff", str(out[efi.id])], capture_output=True, text=True)
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_an_efi_cell_that_cannot_be_efi_stops_before_packer(matrix: Path) -> None:
    cells = {cell.id: cell for cell in plan(load_matrix(matrix))}
    proxmox, vsphere = registry.get("proxmox"), registry.get("vsphere")
    efi = cells[f"proxmox-ubuntu-2404-efi-k8s-{MINOR}"]
    assert proxmox.variant_unbuilt(efi, None) is None and proxmox.variant_unbuilt(efi, (1, 11, 2)) is None
    reason = proxmox.variant_unbuilt(efi, (1, 6, 6))
    assert reason is not None and reason.startswith(f"{efi.id}: the efi variant's bios ovmf and efi_config need "
                                                    "the proxmox plugin (github.com/hashicorp/proxmox")
    assert "Packer 1.6.6's built-in proxmox has neither | fix: Packer >= 1.7.0" in reason
    for name in ("efi", "clone-efi", "base-efi", "clone", "base"):
        assert vsphere.variant_unbuilt(cells[f"vsphere-ubuntu-2404-{name}-k8s-{MINOR}"], (1, 6, 6)) is None
    assert vsphere.firmware(cells[f"vsphere-ubuntu-2404-clone-k8s-{MINOR}"]) == "bios"
    # Rocky's ISO boot command is isolinux's (BIOS): its efi cells are refused, naming the exclude
    rocky = load_matrix(write_matrix(matrix.parent / "rocky.yaml", {"vsphere": {**VSPHERE, "variants": ["efi"]}},
                                     os_ids=["rockylinux-9"]))
    (cell,) = [c for c in plan(rocky) if c.variant == "efi"]
    assert vsphere.variant_unbuilt(cell, (1, 6, 6)) == (
        f"{cell.id}: rocky's ISO boot command is for its BIOS boot loader; no UEFI boot command is known for it yet "
        "| fix: exclude {os: rockylinux-9, cloud: vsphere, variant: efi}")
