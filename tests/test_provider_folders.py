"""The vsphere, proxmox and hcloud cloud folders: their cells render, pass `packer validate` with the
installed Packer (1.6.6 has the vsphere-iso, vsphere-clone, proxmox and hcloud builders built in)
without credentials or network, are `packer fmt` clean, come out under image-builder's target names,
and a bad setting is one line. Their images are not managed (store_path None): tests/test_unmanaged_cloud.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagebuilder.config import PROJECT_ROOT

MINOR = next(iter(yaml.safe_load((PROJECT_ROOT / "versions.lock.yaml").read_text())["minors"]))
CREDENTIALS = ("VSPHERE_USERNAME", "VSPHERE_PASSWORD", "PROXMOX_URL", "PROXMOX_USERNAME", "PROXMOX_PASSWORD",
               "PROXMOX_TOKEN", "HCLOUD_TOKEN")
VSPHERE = {"vcenter_server": "vcenter.example.com", "datacenter": "dc1", "cluster": "cluster1",
           "datastore": "datastore1", "variants": ["clone", "base"], "content_library": "node-images"}
PROXMOX = {"url": "https://pve.example.com:8006/api2/json", "node": "pve1"}


def write_matrix(path: Path, clouds: dict[str, Any], os_ids: list[str] | None = None, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"versions_file": str(PROJECT_ROOT / "versions.lock.yaml"),
                                    "os": os_ids or ["ubuntu-2204"], "kubernetes": [MINOR], "clouds": clouds, **extra}))
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in CREDENTIALS}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture()
def matrix(tmp_path: Path) -> Path:
    key = tmp_path / "template-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return write_matrix(tmp_path / "matrix.yaml", {
        "node-ova-vsphere": {**VSPHERE, "template_ssh_key": str(key)},  # image-builder's name of vsphere
        "proxmox": PROXMOX, "hcloud": {}}, arch=["amd64", "arm64"],
        exclude=[{"cloud": "vsphere", "arch": "arm64"}, {"cloud": "proxmox", "arch": "arm64"}])


@pytest.mark.skipif(shutil.which("packer") is None, reason="needs packer")
def test_every_flavour_renders_and_passes_packer_validate_without_credentials(matrix: Path) -> None:
    out = matrix.parent / "out"
    result = cli("validate", "-m", str(matrix), "--offline", "-o", str(out), cwd=matrix.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    validated = sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok "))
    assert validated == sorted([  # vSphere and Proxmox install Ubuntu from its amd64 ISO; Hetzner has both arches
        f"vsphere-ubuntu-2204-k8s-{MINOR}", f"vsphere-ubuntu-2204-clone-k8s-{MINOR}",
        f"vsphere-ubuntu-2204-base-k8s-{MINOR}", f"proxmox-ubuntu-2204-k8s-{MINOR}",
        f"hcloud-ubuntu-2204-k8s-{MINOR}", f"hcloud-ubuntu-2204-arm64-k8s-{MINOR}"]), result.stdout
    for cell in out.iterdir():
        fmt = subprocess.run(["packer", "fmt", "-check", "-diff", str(cell)], capture_output=True, text=True)
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr

    def source(cell: str, cloud: str) -> str:
        return (out / f"{cell}-k8s-{MINOR}" / f"{cloud}.pkr.hcl").read_text()

    iso, clone, base = (source(f"vsphere-ubuntu-2204{suffix}", "vsphere") for suffix in ("", "-clone", "-base"))
    assert 'source "vsphere-iso" "node"' in iso and 'source "vsphere-clone" "node"' in clone
    assert 'source "vsphere-iso" "node"' in base and 'provisioner "ansible"' not in base  # the OS alone
    assert 'provisioner "ansible"' in iso and 'provisioner "ansible"' in clone
    assert "content_library_destination" in iso and 'env("VSPHERE_PASSWORD")' in iso
    assert "userdel --force --remove builder" in iso and "userdel" not in base  # clones log in as the base's user
    assert 'provisioner "ansible"' in source("proxmox-ubuntu-2204", "proxmox")
    assert "userdel --force --remove builder" in source("proxmox-ubuntu-2204", "proxmox")
    variables = (out / f"hcloud-ubuntu-2204-arm64-k8s-{MINOR}" / "cell.auto.pkrvars.hcl").read_text()
    assert 'hcloud_server_type = "cax11"' in variables and 'hcloud_image       = "ubuntu-22.04"' in variables
    assert 'image_name_prefix  = "cluster-api-ubuntu-2204-arm64-v' in variables
    for cell in out.iterdir():  # no credential in any rendered file
        for path in cell.rglob("*"):
            assert not path.is_file() or "validate-only" not in path.read_text(errors="replace"), path


def test_image_builder_target_names_come_out(matrix: Path) -> None:
    result = cli("targets", "-m", str(matrix), "--format", "json", cwd=matrix.parent)
    assert result.returncode == 0, result.stderr
    found = {entry["target"]: entry["cells"] for entry in json.loads(result.stdout)}
    assert found == {
        "build-node-ova-vsphere-ubuntu-2204": [f"vsphere-ubuntu-2204-k8s-{MINOR}"],
        "build-node-ova-vsphere-clone-ubuntu-2204": [f"vsphere-ubuntu-2204-clone-k8s-{MINOR}"],
        "build-node-ova-vsphere-base-ubuntu-2204": [f"vsphere-ubuntu-2204-base-k8s-{MINOR}"],
        "build-proxmox-ubuntu-2204": [f"proxmox-ubuntu-2204-k8s-{MINOR}"],
        "build-hcloud-ubuntu-2204": [f"hcloud-ubuntu-2204-k8s-{MINOR}"],
        "build-hcloud-ubuntu-2204-arm64": [f"hcloud-ubuntu-2204-arm64-k8s-{MINOR}"],
    }
    # `make build-node-ova-vsphere-clone-ubuntu-2204` passes this to --only
    planned = cli("plan", "-m", str(matrix), "--offline", "--format", "json", "--only",
                  "node-ova-vsphere-clone-ubuntu-2204-k8s-*", cwd=matrix.parent)
    assert [cell["id"] for cell in json.loads(planned.stdout)] == [f"vsphere-ubuntu-2204-clone-k8s-{MINOR}"]
    listed = cli("images", "list", "-m", str(matrix), "--output", "json", cwd=matrix.parent)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split(":")[1].strip() for line in listed.stderr.splitlines()) == ["hcloud", "proxmox", "vsphere"]
    assert all("images are not managed yet" in line for line in listed.stderr.splitlines())


@pytest.mark.parametrize(("cloud", "settings", "expected"), [
    ("vsphere", {k: v for k, v in VSPHERE.items() if k != "vcenter_server"}, "vcenter_server"),
    ("vsphere", {**VSPHERE, "host": "esx1", "template_ssh_key": "/k"}, "either cluster or host"),
    ("vsphere", VSPHERE, "the base and clone variants need template_ssh_key"),
    ("vsphere", {**VSPHERE, "variants": ["iso"]}, "iso"),
    ("proxmox", {"url": "https://pve:8006/api2/json"}, "node"),
    ("proxmox", {**PROXMOX, "storage_pool_type": "tape"}, "storage_pool_type"),
    ("hcloud", {"token": "secret"}, "token"),
])
def test_a_bad_setting_is_one_line(tmp_path: Path, cloud: str, settings: dict[str, Any], expected: str) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", {cloud: settings})
    result = cli("plan", "-m", str(matrix), "--offline", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"imagebuilder: {matrix}:") and expected in line, line
    assert "secret" not in line


def test_an_os_without_an_installer_iso_is_refused_at_its_matrix_line(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", {"proxmox": PROXMOX}, os_ids=["debian-12"])
    result = cli("plan", "-m", str(matrix), "--offline", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "debian-12 has no base image on proxmox" in result.stderr


def test_the_build_step_writes_the_installer_files_with_a_throw_away_or_the_template_key(tmp_path: Path) -> None:
    from imagebuilder.build import Job
    from imagebuilder.clouds import registry
    from imagebuilder.config import load_matrix
    from imagebuilder.planner import plan

    key = tmp_path / "template-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    matrix = write_matrix(tmp_path / "matrix.yaml", {"vsphere": {**VSPHERE, "template_ssh_key": str(key)},
                                                     "proxmox": PROXMOX}, os_ids=["ubuntu-2204", "rockylinux-9"])
    cells = {cell.id: cell for cell in plan(load_matrix(matrix))}
    assert len(cells) == 8
    public: dict[str, str] = {}
    for cell_id, cell in cells.items():
        job = Job(cell=cell, directory=tmp_path / cell_id, estimate=1.0)
        registry.get(cell.cloud).prepare(job)
        private = job.directory / "base" / "id_ed25519"
        assert private.stat().st_mode & 0o077 == 0
        public[cell_id] = (job.directory / "base" / "id_ed25519.pub").read_text().strip()
        seed = job.directory / "base" / "seed" / "user-data"
        agent = "qemu-guest-agent" if cell.cloud == "proxmox" else "open-vm-tools"
        if cell.variant == "clone":
            assert not seed.exists()  # it starts from the template, which holds the key
            continue
        if cell.os == "rockylinux-9":  # a kickstart from the network repositories
            kickstart = (job.directory / "base" / "seed" / "ks.cfg").read_text().splitlines()
            assert f'sshkey --username=builder "{public[cell_id]}"' in kickstart
            assert "url --url=https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/" in kickstart
            assert {"cloud-init", "sudo", agent} <= set(kickstart) and "rootpw --lock" in kickstart
            continue
        assert seed.read_text().startswith("#cloud-config\n")
        autoinstall = yaml.safe_load(seed.read_text())["autoinstall"]
        (user,) = autoinstall["user-data"]["users"]
        assert user["name"] == "builder" and user["ssh_authorized_keys"] == [public[cell_id]]
        assert autoinstall["packages"] == [agent]
    template_key = Path(f"{key}.pub").read_text().strip()
    assert public[f"vsphere-ubuntu-2204-base-k8s-{MINOR}"] == public[f"vsphere-ubuntu-2204-clone-k8s-{MINOR}"] == template_key
    assert len({public[f"vsphere-ubuntu-2204-k8s-{MINOR}"], public[f"proxmox-ubuntu-2204-k8s-{MINOR}"], template_key}) == 3
