"""The unattended installs of AlmaLinux, RHEL and Photon OS (vSphere, Proxmox), and RHEL's base images
the user supplies (supplied.py): the files each installer gets hold what the install needs, the
renders pass `packer validate`, and a missing or bad supplied image is one line naming the setting."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagebuilder import installer, supplied
from imagebuilder.config import load_matrix
from imagebuilder.errors import UserError
from imagebuilder.pipeline import TargetHooks
from imagebuilder.planner import Cell, plan
from test_provider_folders import MINOR, PROXMOX, VSPHERE, cli, write_matrix

SHA_A, SHA_B = "a" * 64, "b" * 64
KVM_IMAGE = {"url": "https://mirror.example/rhel/rhel-9.4-x86_64-kvm.qcow2", "sha256": SHA_A}
DVD_ISO = {"url": "file:///srv/isos/rhel-9.4-x86_64-dvd.iso", "sha256": SHA_B}
ENV_NAMES = [name for kind in ("kvm_image", "iso") for name in supplied.env_names("rhel-9", kind)]
LOCAL = {"qemu": {}, "raw": {}, "ova": {}, "kubevirt": {"registry": "registry.example.com/capi/node"},
         "nutanix": {"endpoint": "pc.example.com", "cluster_name": "c1", "subnet_name": "s1"}}


@pytest.fixture(autouse=True)
def _no_supplied_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def template_key(tmp_path: Path) -> Path:
    key = tmp_path / "template-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def cells_of(path: Path) -> dict[str, Cell]:
    return {cell.id: cell for cell in plan(load_matrix(path))}


def prepared(cell: Cell, directory: Path) -> tuple[str, dict[str, str]]:
    """The build step's files for the installer: (the build user's public key, name -> text)."""
    from imagebuilder.build import Job
    from imagebuilder.clouds import registry

    job = Job(cell=cell, directory=directory, estimate=1.0)
    registry.get(cell.cloud).prepare(job)
    seed = directory / installer.HTTP_DIRECTORY
    return ((directory / "base" / "id_ed25519.pub").read_text().strip(),
            {path.name: path.read_text() for path in seed.iterdir()})


def test_almalinux_and_rhel_install_from_their_dvd_with_the_build_user(tmp_path: Path, template_key: Path) -> None:
    matrix = write_matrix(tmp_path / "m.yaml", {"vsphere": {**VSPHERE, "template_ssh_key": str(template_key)},
                                                "proxmox": PROXMOX}, os_ids=["almalinux-9", "rhel-9"],
                          supplied_images={"rhel-9": {"iso": DVD_ISO}})
    cells = cells_of(matrix)
    for os_id in ("almalinux-9", "rhel-9"):
        for cell_id, agent in ((f"vsphere-{os_id}-k8s-{MINOR}", "open-vm-tools"),
                               (f"proxmox-{os_id}-k8s-{MINOR}", "qemu-guest-agent")):
            public, files = prepared(cells[cell_id], tmp_path / cell_id)
            kickstart = files["ks.cfg"].splitlines()
            assert "cdrom" in kickstart and not any(line.startswith("url ") for line in kickstart)
            assert f'sshkey --username=builder "{public}"' in kickstart and "rootpw --lock" in kickstart
            assert {"cloud-init", "sudo", agent} <= set(kickstart)
            assert "echo 'builder ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-init-users" in kickstart
            assert not any("RHSM" in line or "subscription" in line for line in kickstart)  # registered later
    boot = installer.installer_for(cells[f"vsphere-rhel-9-k8s-{MINOR}"].os_info, "vsphere").boot_command
    assert boot == ("<tab> inst.text inst.ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/ks.cfg<enter><wait>",)


@pytest.mark.parametrize("os_id", ["photon-4", "photon-5"])
def test_photon_installs_from_its_json_kickstart(tmp_path: Path, template_key: Path, os_id: str) -> None:
    matrix = write_matrix(tmp_path / "m.yaml", {"vsphere": {**VSPHERE, "template_ssh_key": str(template_key)}},
                          os_ids=[os_id])
    cells = cells_of(matrix)
    public, files = prepared(cells[f"vsphere-{os_id}-k8s-{MINOR}"], tmp_path / "iso")
    config = json.loads(files["ks.json"])
    assert config["disk"] == "/dev/sda" and config["password"] == {"crypted": True, "text": "*", "age": -1}
    assert {"cloud-init", "open-vm-tools", "openssh-server", "sudo", "linux", "tdnf"} <= set(config["packages"])
    script = config["postinstall"]
    assert script[0] == "#!/bin/sh" and f"echo '{public}' > /home/builder/.ssh/authorized_keys" in script
    assert "echo 'builder ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-init-users" in script
    assert f"mkdir -p {installer.BUILD_SEED}" in script and "systemctl enable sshd cloud-init" in script
    # The base template keeps the build user for clones: it is authorized with the template key.
    base_public, _ = prepared(cells[f"vsphere-{os_id}-base-k8s-{MINOR}"], tmp_path / "base")
    assert base_public == Path(f"{template_key}.pub").read_text().strip() != public
    boot = " ".join(installer.installer_for(cells[f"vsphere-{os_id}-k8s-{MINOR}"].os_info, "vsphere").boot_command)
    assert "ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/ks.json" in boot and "insecure_installation=1" in boot
    assert "photon.media=cdrom" in boot


def test_the_supplied_sha256_is_in_the_key_and_the_url_is_not(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def keys(**extra: Any) -> dict[str, Cell]:
        return cells_of(write_matrix(tmp_path / "m.yaml", LOCAL, os_ids=["rhel-9"], **extra))

    given = keys(supplied_images={"rhel-9": {"kvm_image": KVM_IMAGE}})
    moved = keys(supplied_images={"rhel-9": {"kvm_image": {**KVM_IMAGE, "url": "https://other.example/x.qcow2"}}})
    other = keys(supplied_images={"rhel-9": {"kvm_image": {**KVM_IMAGE, "sha256": SHA_B}}})
    url_env, sha_env = supplied.env_names("rhel-9", "kvm_image")
    monkeypatch.setenv(url_env, KVM_IMAGE["url"])
    monkeypatch.setenv(sha_env, SHA_A.upper())
    from_env = keys()
    assert len(given) == 5 and set(given) == set(moved) == set(other) == set(from_env)
    for cell_id, cell in given.items():
        assert cell.base_image == {"supplied": "kvm_image", "sha256": SHA_A}
        assert cell.base_source == {"url": KVM_IMAGE["url"]} and supplied.require(cell) == (KVM_IMAGE["url"], SHA_A)
        assert cell.build_key == moved[cell_id].build_key == from_env[cell_id].build_key != other[cell_id].build_key


def test_a_cell_without_its_supplied_image_plans_but_fails_before_packer_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagebuilder.build import Job

    monkeypatch.setenv("RHSM_ACTIVATION_KEY", "key")  # registered: the supplied image is what is missing
    monkeypatch.setenv("RHSM_ORG_ID", "org")
    cells = cells_of(write_matrix(tmp_path / "m.yaml", {"qemu": {}, "proxmox": PROXMOX}, os_ids=["rhel-9"]))
    for cell in cells.values():
        with pytest.raises(UserError) as caught:
            TargetHooks(publish=False).prepare(Job(cell=cell, directory=tmp_path / cell.id, estimate=1.0))
        message = str(caught.value)
        url_env, sha_env = supplied.env_names("rhel-9", cell.base_image["supplied"])
        assert "\n" not in message and message.startswith(f"{cell.id}: rhel-9 starts from ")
        assert f"supplied_images.rhel-9.{cell.base_image['supplied']}" in message and url_env in message
        assert sha_env in message and "| fix: " in message
        assert not (tmp_path / cell.id / "base").exists()  # nothing prepared


@pytest.mark.parametrize(("images", "expected"), [
    ({"rhel-9": {"kvm_image": {**KVM_IMAGE, "sha256": "abc"}}}, "sha256"),
    ({"rhel-9": {"kvm_image": {**KVM_IMAGE, "url": "ftp://x/y"}}}, "url"),
    ({"rhel-9": {"kvm-image": KVM_IMAGE}}, "unknown supplied image 'kvm-image' (did you mean 'kvm_image'?)"),
    ({"rockylinux-9": {"iso": DVD_ISO}}, "rockylinux-9 has no supplied base image"),
])
def test_a_bad_supplied_image_is_one_line_at_its_matrix_line(tmp_path: Path, images: dict[str, Any],
                                                             expected: str) -> None:
    matrix = write_matrix(tmp_path / "m.yaml", {"qemu": {}}, os_ids=["rhel-9"], supplied_images=images)
    result = cli("plan", "-m", str(matrix), "--offline", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"imagebuilder: {matrix}:") and expected in line and "supplied_images" in line, line


@pytest.mark.skipif(shutil.which("packer") is None, reason="needs packer")
def test_the_new_cells_render_and_pass_packer_validate(tmp_path: Path, template_key: Path) -> None:
    matrix = write_matrix(tmp_path / "m.yaml", {**LOCAL, "vsphere": {**VSPHERE, "variants": [],
                                                                     "template_ssh_key": str(template_key)}},
                          os_ids=["rhel-9", "almalinux-9", "photon-5"],
                          supplied_images={"rhel-9": {"kvm_image": KVM_IMAGE, "iso": DVD_ISO}},
                          exclude=[{"os": "almalinux-9", "cloud": "[!v]*"}, {"os": "photon-5", "cloud": "[!v]*"},
                                   {"os": "rhel-9", "cloud": "raw"}, {"os": "rhel-9", "cloud": "kubevirt"}])
    result = cli("validate", "-m", str(matrix), "--offline", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith(("ok ", "parsed "))) == \
        sorted(f"{cell}-k8s-{MINOR}" for cell in ("qemu-rhel-9", "ova-rhel-9", "nutanix-rhel-9", "vsphere-rhel-9",
                                                  "vsphere-almalinux-9", "vsphere-photon-5"))
    variables = {path.parent.name: path.read_text() for path in (tmp_path / "out").glob("*/cell.auto.pkrvars.hcl")}
    assert f'qemu_base_checksum = "sha256:{SHA_A}"' in variables[f"qemu-rhel-9-k8s-{MINOR}"]
    assert f'"{KVM_IMAGE["url"]}"' in variables[f"nutanix-rhel-9-k8s-{MINOR}"]  # Prism fetches it: http(s)
    rhel_iso = variables[f"vsphere-rhel-9-k8s-{MINOR}"]
    assert f'"{DVD_ISO["url"]}"' in rhel_iso and f'"sha256:{SHA_B}"' in rhel_iso and '"rhel9_64Guest"' in rhel_iso
    assert '"vmwarePhoton64Guest"' in variables[f"vsphere-photon-5-k8s-{MINOR}"]
    rendered = yaml.safe_dump(variables)
    assert "RHSM" not in rendered


def test_nutanix_fetches_the_supplied_image_itself_so_a_file_url_is_refused(tmp_path: Path) -> None:
    from imagebuilder.clouds import registry

    images = {"rhel-9": {"kvm_image": {**KVM_IMAGE, "url": "file:///srv/rhel-9.4-x86_64-kvm.qcow2"}}}
    cells = cells_of(write_matrix(tmp_path / "m.yaml", {"qemu": {}, "nutanix": LOCAL["nutanix"]}, os_ids=["rhel-9"],
                                  supplied_images=images))
    with pytest.raises(UserError) as caught:
        registry.get("nutanix").packer_variables(cells[f"nutanix-rhel-9-k8s-{MINOR}"], None)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value) and "is not an http(s) URL | fix: " in str(caught.value)
    assert supplied.require(cells[f"qemu-rhel-9-k8s-{MINOR}"])[0].startswith("file://")  # the local build reads it


def test_the_local_build_takes_the_supplied_image_only_with_its_sha256(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from imagebuilder import local_target

    monkeypatch.setenv("IMAGEBUILDER_CACHE", str(tmp_path / "cache"))
    image = tmp_path / "downloads" / "rhel-9.4-x86_64-kvm.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"QFI\xfb stand-in for the user's download")
    right = {"url": image.as_uri(), "sha256": hashlib.sha256(image.read_bytes()).hexdigest()}
    for name, given in (("right", right), ("wrong", {**right, "sha256": SHA_A})):
        cells = cells_of(write_matrix(tmp_path / f"{name}.yaml", {"qemu": {}}, os_ids=["rhel-9"],
                                      supplied_images={"rhel-9": {"kvm_image": given}}))
        cell = cells[f"qemu-rhel-9-k8s-{MINOR}"]
        if name == "right":
            disk = local_target.base_files(cell)["disk.img"]
            assert disk.read_bytes() == image.read_bytes() and right["sha256"] in disk.parts
            continue
        with pytest.raises(UserError, match=f"sha256 is {right['sha256']}, expected {SHA_A}"):
            local_target.base_files(cell)
        assert not any((tmp_path / "cache").rglob(f"{SHA_A}/*.qcow2"))  # nothing left behind
