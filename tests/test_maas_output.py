"""The MAAS output (imagebuilder/clouds/maas/): the local disk's file systems, as its /etc/fstab mounts
them, in one root tarball (MAAS's `tgz` custom image) with a sha256 file, catalogued as its own store;
`images list/resolve` and `prune` through the CLI. No build or VM: small BIOS and UEFI disks made here
from a tree (the UEFI one as the offline build lays it out: GPT, ESP 15, root 1), tarred read-only."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from test_raw_output import MINOR, cells_of, cli, env  # noqa: F401 (env: a fixture)

from imagebuilder.artifact import Artifact
from imagebuilder.build import Job
from imagebuilder.clouds.maas import maas_tarball_of
from imagebuilder.clouds.maas.tarball import fstab_mounts, partition_of, partitions
from imagebuilder.config import PROJECT_ROOT
from imagebuilder.distributions import debian
from imagebuilder.metadata import ImageMetadata
from imagebuilder.pipeline import TargetHooks

ROOT_UUID = "0b6bd9a2-5d3c-4b7e-9f0e-2c1d3e4f5a6b"
EFI_DISK = 1300 * 1024**2  # the smallest UEFI layout (debian.efi_partition_table), sparse
BIOS_DISK = 64 * 1024**2

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the tarball loop-mounts the disk: root only")


def tree(tmp_path: Path, efi: bool) -> Path:
    """A small system: fstab by UUID (and the ESP's), a setuid binary, a user's file, a hard link, a symlink."""
    root = tmp_path / "tree"
    for directory in ("etc", "usr/bin", "home/node", "boot/efi", "dev"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "etc/fstab").write_text(f"# made by the test\nUUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n"
                                    + (debian.esp_fstab_line(ROOT_UUID) if efi else "")
                                    + "/swap.img none swap sw 0 0\n")
    (root / "etc/hostname").write_text("maas\n")
    os.link(root / "etc/hostname", root / "etc/hostname.link")
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (root / "usr/bin/sudo").write_bytes(b"\x7fELF sudo")
    os.chmod(root / "usr/bin/sudo", 0o4755)
    (root / "home/node/.profile").write_text("# node\n")
    os.chown(root / "home/node/.profile", 1000, 1001)
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return root


def make_disk(tmp_path: Path, efi: bool) -> Path:
    disk = tmp_path / "disk.raw"
    if efi:
        esp = tmp_path / "esp"
        (esp / "EFI/BOOT").mkdir(parents=True)
        (esp / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ shim")
        debian.write_efi_disk(tree(tmp_path, efi), esp, disk, EFI_DISK, ROOT_UUID)
    else:
        debian.write_partitioned_disk(tree(tmp_path, efi), disk, BIOS_DISK, ROOT_UUID)
    return disk


def members(tarball: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tarball) as archive:
        return {member.name.removeprefix("./"): member for member in archive.getmembers()}


@pytest.mark.parametrize("efi", [False, True], ids=["bios", "efi"])
def test_the_tarball_holds_the_file_systems_as_fstab_mounts_them(tmp_path: Path, efi: bool) -> None:
    disk = make_disk(tmp_path, efi)
    found = partitions(disk)
    assert {p.number for p in found} == ({1, 15} if efi else {1})
    assert partition_of(f"UUID={ROOT_UUID}", found).number == 1  # type: ignore[union-attr]
    assert partition_of("/dev/vda1", found).number == 1  # type: ignore[union-attr]
    assert fstab_mounts((tmp_path / "tree/etc/fstab").read_text())[0] == (f"UUID={ROOT_UUID}", "/", "ext4")

    tarball, sums = maas_tarball_of(disk)
    assert tarball == tmp_path / "disk.tar.gz" and sums.name == "disk.tar.gz.sha256sum"
    assert subprocess.run(["sha256sum", "--check", "--strict", sums.name], cwd=tmp_path).returncode == 0
    assert not list(tmp_path.glob(".*maas*")) and not list(tmp_path.glob(".*.tmp"))  # work files gone
    assert subprocess.run(["findmnt", "--noheadings", "--list"], capture_output=True, text=True).stdout.count(
        str(tmp_path)) == 0  # the mounts went with their namespace
    found_members = members(tarball)
    assert tarfile.open(tarball).getmembers()[0].name == "."  # a root tarball: paths from the root
    pair = sorted((found_members[name] for name in ("etc/hostname", "etc/hostname.link")), key=lambda m: m.islnk())
    assert pair[0].isfile() and pair[1].islnk() and pair[1].linkname == pair[0].name  # a hard link stays one
    assert found_members["etc/localtime"].issym() and found_members["etc/localtime"].linkname == "/usr/share/zoneinfo/UTC"
    assert found_members["usr/bin/sudo"].mode & 0o7777 == 0o4755 and found_members["usr/bin/sudo"].uid == 0
    profile = found_members["home/node/.profile"]
    assert (profile.uid, profile.gid, profile.uname) == (1000, 1001, "")  # numeric owners only
    null = found_members["dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    assert "lost+found" in found_members
    # the UEFI disk's EFI system partition, mounted where fstab says, is in the tree
    assert ("boot/efi/EFI/BOOT/BOOTX64.EFI" in found_members) is efi
    if efi:
        with tarfile.open(tarball) as archive:
            assert archive.extractfile("./boot/efi/EFI/BOOT/BOOTX64.EFI").read() == b"MZ shim"  # type: ignore[union-attr]


def test_a_maas_cell_catalogues_its_tarball_apart_and_lists_resolves_prunes(tmp_path: Path, env: dict[str, str]) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump({"versions_file": str(PROJECT_ROOT / "versions.lock.yaml"), "os": ["ubuntu-2404"],
                                      "kubernetes": [MINOR], "clouds": {"maas": {"boot_test": False, "variants": ["efi"]}},
                                      "retention": {"keep_newest": 1, "min_age_days": 0, "deprecate_grace_days": 0}}))
    cells = cells_of(matrix)
    cell, efi = cells[f"maas-ubuntu-2404-k8s-{MINOR}"], cells[f"maas-ubuntu-2404-efi-k8s-{MINOR}"]
    assert efi.build_key != cell.build_key
    disk = make_disk(tmp_path, efi=False)
    hooks = TargetHooks(publish=True)
    for index, timestamp in enumerate(("20260102000000", "20260103000000")):
        built = replace(cell, build_key=f"{index}" * 64)
        directory = tmp_path / "build" / timestamp
        (directory / "output").mkdir(parents=True)
        qcow2 = directory / "output" / f"ubuntu-2404-kube-v{built.kubernetes_version}-{timestamp}.qcow2"
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(disk), str(qcow2)], check=True)
        metadata = ImageMetadata(os="ubuntu-2404", os_version="24.04", kubernetes_version=f"v{built.kubernetes_version}",
                                 kubernetes_minor=built.kubernetes, arch=built.arch, build_key=built.build_key,
                                 cell=built.id, version="0.1.0", git_commit="0123456789abcdef", build_timestamp=timestamp)
        artifact = Artifact(cell_id=built.id, cloud=built.cloud, build_key=built.build_key, image_name=qcow2.stem,
                            metadata=metadata, ids={"default": qcow2.stem}, files=[str(qcow2)],
                            versions={"kubernetes": built.kubernetes_version})
        hooks.finish(Job(cell=built, directory=directory, estimate=1.0), artifact)

    def listed(cloud: str) -> list[dict]:
        result = cli(env, tmp_path, "images", "list", "-m", str(matrix), "--cloud", cloud, "--output", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    records = listed("maas")
    assert [r["build_key"][0] for r in records] == ["1", "0"] and listed("qemu") == []
    assert [Path(f).name.split("-")[-1] for f in records[0]["files"]] == ["20260103000000.tar.gz",
                                                                           "20260103000000.tar.gz.sha256sum"]
    assert "etc/fstab" in members(Path(records[0]["files"][0]))
    resolved = cli(env, tmp_path, "images", "resolve", "-m", str(matrix), "--cloud", "maas", "--os", "ubuntu-2404",
                   "--k8s", MINOR)
    assert resolved.returncode == 0 and resolved.stdout.strip() == records[0]["image_id"], resolved.stderr
    for step in ("deprecated", "deleted"):
        applied = cli(env, tmp_path, "prune", "-m", str(matrix), "--cloud", "maas", "--apply")
        assert applied.returncode == 0 and f"1 {step}" in applied.stdout, applied.stdout
    assert [r["image_id"] for r in listed("maas")] == [records[0]["image_id"]]


def test_the_maas_targets_are_image_builders() -> None:
    result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "targets", "-m",
                             str(PROJECT_ROOT / "examples" / "image-builder.yaml"), "--format", "json"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    found = {entry["target"]: entry["cells"] for entry in json.loads(result.stdout)}
    minor = yaml.safe_load((PROJECT_ROOT / "examples" / "image-builder.yaml").read_text())["kubernetes"][0]
    for os_id in ("ubuntu-2204", "ubuntu-2404", "ubuntu-2604"):
        assert found[f"build-maas-{os_id}"] == [f"maas-{os_id}-k8s-{minor}"]
        assert found[f"build-maas-{os_id}-efi"] == [f"maas-{os_id}-efi-k8s-{minor}"]
    assert not [target for target in found if target.startswith("build-maas-") and "ubuntu" not in target]
