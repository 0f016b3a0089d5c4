"""Flatcar baked through its own mechanism (imagebuilder/flatcar.py): the Kubernetes sysext written onto
the ROOT partition of Flatcar's qemu disk, offline. The vendor's disk is a small fixture with Flatcar's
partition names (GPT, ROOT ext4), served with its DIGESTS and version.txt the way the release server
lays them out; the pins are the fixture release. No VM."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from imagebuilder import flatcar, local_target, sysext
from imagebuilder.build import Job
from imagebuilder.clouds import registry
from imagebuilder.pipeline import TargetHooks
from imagebuilder.config import PROJECT_ROOT, load_matrix
from imagebuilder.errors import UserError
from imagebuilder.planner import plan
from mirror import DEFAULT_FIXTURE_VERSIONS, build_fixture_release, fixture_lock, mirrors_for, serve_directory

MINOR = ".".join(DEFAULT_FIXTURE_VERSIONS["kubernetes"].split(".")[:2])
VERSION = "4230.2.3"
IMAGE = "flatcar_production_qemu_image.img"
ISO = "flatcar_production_iso_image.iso"
OPENSTACK = "flatcar_production_openstack_image.img"
GENERIC = "flatcar_production_image.bin.bz2"
ROOT_START = 18432  # sectors: after a small EFI-SYSTEM partition, as on Flatcar's disk (where it is partition 9)


def fixture_disk(work: Path) -> Path:
    """A qcow2 with Flatcar's partition names: EFI-SYSTEM, and ROOT as ext4 that already has /etc."""
    raw = work / "disk.raw"
    subprocess.run(["truncate", "-s", "48M", str(raw)], check=True)
    table = f'label: gpt\nstart=2048, size=16384, name="EFI-SYSTEM"\nstart={ROOT_START}, size=77824, name="ROOT"\n'
    subprocess.run(["sfdisk", "-q", str(raw)], input=table, text=True, check=True)
    tree = work / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("vendor\n")
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "ROOT", "-d", str(tree), "-E", f"offset={ROOT_START * 512}",
                    str(raw), "38M"], check=True)
    qcow2 = work / IMAGE
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    return qcow2


def digests(path: Path) -> str:
    data = path.read_bytes()
    return "".join(f"# {algorithm.upper()} HASH\n{hashlib.new(algorithm, data).hexdigest()}  {path.name}\n"
                   for algorithm in ("md5", "sha1", "sha512"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """The fixture release (pins) and a Flatcar release server: current/ and its version's directory."""
    root = tmp_path_factory.mktemp("flatcar-mirror")
    files = build_fixture_release(root, DEFAULT_FIXTURE_VERSIONS, "amd64")
    disk = fixture_disk(tmp_path_factory.mktemp("flatcar-disk"))
    for directory in ("current", VERSION):
        release = root / "flatcar" / "amd64-usr" / directory
        release.mkdir(parents=True)
        (release / IMAGE).write_bytes(disk.read_bytes())
        (release / (IMAGE + ".DIGESTS")).write_text(digests(disk))
        (release / "version.txt").write_text(f"FLATCAR_BUILD=4230\nFLATCAR_VERSION={VERSION}\n")
        for other in (ISO, OPENSTACK, GENERIC):  # what the Packer builders install or import: only their sums matter here
            (release / other).write_bytes(other.encode())
            (release / (other + ".DIGESTS")).write_text(digests(release / other))
    with serve_directory(root) as base_url:
        yield base_url, files, disk


def matrix_file(directory: Path, base_url: str, files, clouds: dict) -> Path:
    (directory / "versions.lock.yaml").write_text(yaml.safe_dump(fixture_lock(files, DEFAULT_FIXTURE_VERSIONS)))
    path = directory / "matrix.yaml"
    path.write_text(yaml.safe_dump({
        "versions_file": "versions.lock.yaml", "os": ["flatcar"], "kubernetes": [MINOR], "clouds": clouds,
        "mirrors": {**mirrors_for(base_url), "flatcar": f"{base_url}/flatcar"}}))
    return path


def test_local_bake_writes_the_sysext_onto_root(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, files, disk = served
    monkeypatch.setenv("IMAGEBUILDER_CACHE", str(tmp_path / "cache"))
    cells = {cell.id: cell for cell in plan(load_matrix(matrix_file(tmp_path, base_url, files, {"qemu": {}, "openstack": {}})))}
    cell = cells[f"qemu-flatcar-k8s-{MINOR}"]
    assert cell.strategy == "bake" and cells[f"openstack-flatcar-k8s-{MINOR}"].strategy == "sysext"
    job = Job(cell=cell, directory=tmp_path / "build", estimate=1.0)
    job.directory.mkdir()
    local_target.prepare(job)
    assert job.builder == flatcar.BUILDER

    with job.log_path.open("ab") as log:
        qcow2 = flatcar.bake_local(job, threading.Event(), log)

    # The base came from the version's own directory, checked against the DIGESTS sha512.
    cached = next((tmp_path / "cache" / "base" / "flatcar").rglob(IMAGE))
    assert cached.read_bytes() == disk.read_bytes()
    image = job.directory / "sysext" / sysext.image_name(DEFAULT_FIXTURE_VERSIONS["kubernetes"], "amd64")
    listing = subprocess.run(["unsquashfs", "-l", str(image)], capture_output=True, text=True, check=True).stdout
    assert "squashfs-root/usr/bin/kubelet" in listing and "extension-release.kubernetes" in listing
    manifest = json.loads((job.directory / "packer-manifest.json").read_text())
    assert manifest["builds"][0]["files"][0]["name"] == str(qcow2.relative_to(job.directory))

    raw = tmp_path / "check.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(qcow2), str(raw)], check=True)
    root = flatcar.root_partition(raw)
    assert root.start == ROOT_START * 512
    node_image = f"{sysext.NODE_IMAGE_DIR}/{image.name}"
    dumped = flatcar.dump_entry(raw, root, node_image, tmp_path / "dumped.raw")
    assert hashlib.sha256(dumped.read_bytes()).digest() == hashlib.sha256(image.read_bytes()).digest()
    assert flatcar.read_entry(raw, root, sysext.NODE_SYMLINK) == ("link", node_image)
    assert flatcar.read_entry(raw, root, flatcar.KUBELET_WANTS) == ("link", "/usr/lib/systemd/system/kubelet.service")
    assert flatcar.read_entry(raw, root, "/etc/hostname") == ("file", "7")  # the vendor's files stay
    stat = subprocess.run(["debugfs", "-R", f"stat {node_image}", f"{raw}?offset={root.start}"],
                          capture_output=True, text=True, check=True).stdout
    assert "User:     0   Group:     0" in stat and "Mode:  0644" in stat
    subprocess.run(["e2fsck", "-fn", f"{raw}?offset={root.start}"], capture_output=True, check=True)


def test_a_disk_without_root_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "plain.raw"
    subprocess.run(["truncate", "-s", "8M", str(raw)], check=True)
    subprocess.run(["sfdisk", "-q", str(raw)], input='label: gpt\nstart=2048, name="USR-A"\n', text=True, check=True)
    with pytest.raises(UserError, match="no GPT partition named ROOT"):
        flatcar.write_entries(raw, flatcar.node_entries("kubernetes-v1.35.1-x86-64.raw"), {})


def test_digests_version_and_release_url() -> None:
    text = ("# MD5 HASH\n" + "a" * 32 + f"  {IMAGE}\n# SHA1 HASH\n" + "b" * 40 + f"  {IMAGE}\n"
            "# SHA512 HASH\n" + "C" * 128 + f"  {IMAGE}\n" + "d" * 128 + f"  {IMAGE}.bz2\n")
    sums = flatcar.parse_digests(text)
    assert sums[IMAGE] == {"md5": "a" * 32, "sha1": "b" * 40, "sha512": "c" * 128}
    assert sums[IMAGE + ".bz2"] == {"sha512": "d" * 128}
    assert flatcar.parse_version("FLATCAR_BUILD=1\nFLATCAR_VERSION=4230.2.3\n") == "4230.2.3"
    assert flatcar.release_url(f"https://m/amd64-usr/current/{IMAGE}", "4230.2.3") == f"https://m/amd64-usr/4230.2.3/{IMAGE}"
    with pytest.raises(UserError, match="FLATCAR_VERSION"):
        flatcar.parse_version("FLATCAR_BUILD=1\n")


def test_the_shipped_matrix_bakes_flatcar_on_the_local_outputs() -> None:
    cells = plan(load_matrix(PROJECT_ROOT / "examples" / "image-builder.yaml"))
    flatcar_cells = {cell.cloud: cell.strategy for cell in cells if cell.os == "flatcar" and cell.arch == "amd64"}
    assert {cloud: flatcar_cells[cloud] for cloud in ("qemu", "raw", "ova", "kubevirt", "aws")} == {
        "qemu": "bake", "raw": "bake", "ova": "bake", "kubevirt": "bake", "aws": "sysext"}


def test_packer_builders_bake_flatcar_and_validate(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vSphere (ISO, clone, base), Proxmox, Hetzner Cloud and Nutanix: rendered with the Flatcar build step
    (the sysext uploaded first, no roles), the ISO as the release the plan resolved with its sha512, and
    `packer validate` (Nutanix: parsed; Packer 1.6.6 lacks its builder). The sysext is built before Packer."""
    base_url, files, _ = served
    key = tmp_path / "template_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    clouds = {"vsphere": {"vcenter_server": "vcenter.example.com", "datacenter": "dc1", "cluster": "c1",
                          "datastore": "ds1", "variants": ["clone", "base"], "template_ssh_key": str(key)},
              "proxmox": {"url": "https://pve.example.com:8006/api2/json", "node": "pve1"},
              "hcloud": {}, "nutanix": {"endpoint": "pc.example.com", "cluster_name": "c1", "subnet_name": "v10"}}
    matrix = matrix_file(tmp_path, base_url, files, clouds)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "IMAGEBUILDER_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "rendered"
    result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "validate", "-m", str(matrix), "-o", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for cell_id in ("vsphere-flatcar", "vsphere-flatcar-clone", "vsphere-flatcar-base", "proxmox-flatcar",
                    "hcloud-flatcar"):
        assert f"ok  {cell_id}-k8s-{MINOR}" in result.stdout, result.stdout
    assert f"parsed  nutanix-flatcar-k8s-{MINOR}" in result.stdout

    name = sysext.image_name(DEFAULT_FIXTURE_VERSIONS["kubernetes"], "amd64")
    iso_sha512 = hashlib.sha512(ISO.encode()).hexdigest()
    for cell_id, cloud in ((f"vsphere-flatcar-k8s-{MINOR}", "vsphere"), (f"proxmox-flatcar-k8s-{MINOR}", "proxmox")):
        hcl = (out / cell_id / f"{cloud}.pkr.hcl").read_text()
        pkrvars = (out / cell_id / "cell.auto.pkrvars.hcl").read_text()
        assert f'"{base_url}/flatcar/amd64-usr/{VERSION}/{ISO}"' in pkrvars and f'"sha512:{iso_sha512}"' in pkrvars
        assert "flatcar-install -s -C stable -o " in pkrvars
        assert 'provisioner "ansible"' not in hcl and "cloud-init status" not in hcl
        upload, first_shell = hcl.index('provisioner "file"'), hcl.index('provisioner "shell"')
        assert upload < first_shell and f"sysext/{name}" in hcl[upload:first_shell]
        assert "systemd-sysext refresh" in hcl and flatcar.FIRST_BOOT_FLAG in hcl
    base = (out / f"vsphere-flatcar-base-k8s-{MINOR}" / "vsphere.pkr.hcl").read_text()
    assert 'provisioner "file"' not in base and "systemd-sysext" not in base  # Flatcar alone, for the clones
    hcloud = (out / f"hcloud-flatcar-k8s-{MINOR}" / "hcloud.pkr.hcl").read_text()
    assert 'rescue          = "linux64"' in hcloud and "-o hetzner -C stable -B amd64-usr" in hcloud
    assert f"mount /dev/disk/by-partlabel/ROOT {flatcar.RESCUE_MOUNT}" in hcloud
    nutanix_vars = (out / f"nutanix-flatcar-k8s-{MINOR}" / "cell.auto.pkrvars.hcl").read_text()
    assert f'"{base_url}/flatcar/amd64-usr/{VERSION}/{OPENSTACK}"' in nutanix_vars

    # Before Packer: the sysext where the template uploads it from (the fixture pins), and Nutanix's
    # user data as the Ignition config that lets the build user in.
    monkeypatch.setenv("IMAGEBUILDER_CACHE", str(tmp_path / "cache"))
    cells = {cell.id: cell for cell in plan(load_matrix(matrix))}
    job = Job(cell=cells[f"hcloud-flatcar-k8s-{MINOR}"], directory=out / f"hcloud-flatcar-k8s-{MINOR}", estimate=1.0)
    TargetHooks().prepare(job)
    listing = subprocess.run(["unsquashfs", "-l", str(job.directory / "sysext" / name)], capture_output=True,
                             text=True, check=True).stdout
    assert "squashfs-root/usr/bin/kubelet" in listing
    job = Job(cell=cells[f"nutanix-flatcar-k8s-{MINOR}"], directory=tmp_path / "nutanix", estimate=1.0)
    registry.get("nutanix").prepare(job)
    ignition = json.loads((job.directory / "base" / "seed" / "user-data").read_text())
    public = (job.directory / "base" / "id_ed25519.pub").read_text().strip()
    assert ignition["ignition"]["version"] == sysext.IGNITION_VERSION
    assert ignition["passwd"]["users"] == [{"name": "builder", "groups": ["sudo"], "sshAuthorizedKeys": [public]}]


def test_a_cloud_without_a_flatcar_bake_refuses_it(tmp_path: Path) -> None:
    """An override that bakes Flatcar where its folder has no Flatcar bake: one line, before Packer."""
    from imagebuilder.render import render_files

    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump({"versions_file": str(PROJECT_ROOT / "versions.lock.yaml"), "os": ["flatcar"],
                                      "kubernetes": [next(iter(yaml.safe_load((PROJECT_ROOT / "versions.lock.yaml")
                                                                              .read_text())["minors"]))],
                                      "clouds": {"openstack": {}},
                                      "overrides": [{"match": {"os": "flatcar"}, "strategy": "bake"}]}))
    cell = plan(load_matrix(matrix))[0]
    with pytest.raises(UserError, match="openstack does not bake Flatcar"):
        render_files(cell, tmp_path / cell.id, None)
