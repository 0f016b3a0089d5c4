"""The MAAS output's file: the disk's file systems, as the image mounts them, in one root tarball.

MAAS takes a custom Ubuntu image as a root tarball (`boot-resources create ... filetype=tgz`, its
default type; image-builder's `generate-maas-image.sh` makes the same): curtin partitions the
machine's disk itself, unpacks the tarball onto it and installs the boot loader from the image's
own packages (grub-pc for BIOS, shim-signed and grub-efi-amd64-signed for UEFI machines).

The disk is read as the image's /etc/fstab mounts it: its partitions (sfdisk) and their file
systems (blkid) are loop-mounted read-only in a private mount namespace (this module run under
`unshare --mount`: the mounts go away with the process, whatever happens; a FAT partition is copied
out with mtools into a tmpfs at its mount point), the root being the one
with /etc/fstab, every other fstab line that names a partition of the disk (UUID=, LABEL=,
PARTUUID= or /dev/<disk><n>) mounted where it says (/boot, /boot/efi), and GNU tar writes the
tree: numeric owners, permissions, hard links, device nodes, extended attributes (file
capabilities), ACLs and SELinux labels, sparse files; POSIX format, gzip.

    python -m imagebuilder.clouds.maas.tarball <disk.raw> <target.tar.gz>   (under unshare, as root_tarball runs it)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.clouds import CloudError
from imagebuilder.textline import one_line

SECTOR = 512
SUFFIX = ".tar.gz"
# File systems mounted read-only without touching them (ext4: no journal replay on a dirty file system);
# FAT (the EFI system partition) is read with mtools instead (_fat_copy).
MOUNT_OPTIONS = {"ext4": "ro,noload", "ext3": "ro,noload", "ext2": "ro", "xfs": "ro,norecovery"}
TAR_OPTIONS = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--selinux", "--sparse",
               "--format=posix", "--gzip")


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    partuuid: str  # GPT's partition UUID, lower case ("" on MBR)
    fs_type: str  # blkid's TYPE ("ext4", "vfat"); "" when none is recognised
    fs_uuid: str
    label: str


def _run(command: list[str], what: str) -> str:
    if shutil.which(command[0]) is None:
        raise CloudError(f"{command[0]} not found | fix: apt-get install $(.ci/apt-packages)")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CloudError(f"{what}: {command[0]} failed: {one_line(result.stderr or result.stdout)[:300]} "
                         "| fix: check that the file is a whole disk image")
    return result.stdout


def partitions(disk: Path) -> list[Partition]:
    """The disk's partitions and the file system each holds."""
    table = json.loads(_run(["sfdisk", "--json", str(disk)], str(disk)))["partitiontable"]
    found = []
    for entry in table["partitions"]:
        number = int(entry["node"][len(str(disk)):])
        start = int(entry["start"]) * SECTOR
        probe = subprocess.run(["blkid", "-p", "-O", str(start), "-o", "export", str(disk)], capture_output=True,
                               text=True, check=False)
        fields = dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)
        found.append(Partition(number=number, start=start, size=int(entry["size"]) * SECTOR,
                               partuuid=str(entry.get("uuid", "")).lower(), fs_type=fields.get("TYPE", ""),
                               fs_uuid=fields.get("UUID", ""), label=fields.get("LABEL", "")))
    return found


def fstab_mounts(text: str) -> list[tuple[str, str, str]]:
    """(spec, mount point, type) of each fstab line that mounts a file system, in file order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3 and fields[1].startswith("/") and fields[2] not in ("swap", "none", "tmpfs", "proc"):
            mounts.append((fields[0], fields[1], fields[2]))
    return mounts


def partition_of(spec: str, found: list[Partition]) -> Partition | None:
    """The partition an fstab spec names, or None (not on this disk)."""
    kind, _, value = spec.partition("=")
    for partition in found:
        if (kind == "UUID" and value.lower() == partition.fs_uuid.lower()
                or kind == "LABEL" and value == partition.label
                or kind == "PARTUUID" and value.lower() == partition.partuuid
                or spec.startswith("/dev/") and spec.rstrip("0123456789") != spec
                and int(spec[len(spec.rstrip("0123456789")):]) == partition.number):
            return partition
    return None


def _mount(disk: Path, partition: Partition, where: Path) -> None:
    if partition.fs_type == "vfat":
        _fat_copy(disk, partition, where)
        return
    options = MOUNT_OPTIONS.get(partition.fs_type)
    if options is None:
        raise CloudError(f"{disk}: partition {partition.number} holds {partition.fs_type or 'no known file system'}, "
                         f"which the MAAS tarball does not read | fix: only ext2/3/4, vfat and xfs are read")
    where.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", partition.fs_type, "-o", f"{options},loop,offset={partition.start},sizelimit={partition.size}",
          str(disk), str(where)], f"{disk}: mount partition {partition.number}")


def _fat_copy(disk: Path, partition: Partition, where: Path) -> None:
    """A FAT partition (the EFI system partition) read with mtools into a tmpfs mounted at `where`:
    no vfat kernel module needed, and the root stays read-only. FAT has no owners: root's, 0700 at the top."""
    where.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", str(where)], f"{disk}: tmpfs for partition {partition.number}")
    image = f"{disk}@@{partition.start}"
    if _run(["mdir", "-b", "-i", image, "::/"], f"{disk}: partition {partition.number}").strip():
        _run(["mcopy", "-s", "-p", "-m", "-n", "-i", image, "::/*", f"{where}/"], f"{disk}: partition {partition.number}")


def write_tarball(disk: Path, target: Path) -> None:
    """In a private mount namespace already (main): mount the image's file systems, tar them."""
    found = partitions(disk)
    work = Path(tempfile.mkdtemp(prefix=".maas-root-", dir=target.parent))
    root = work / "root"
    partial = target.with_name(f".{target.name}.tmp")
    try:
        for partition in found:
            if partition.fs_type not in ("ext4", "ext3", "ext2", "xfs"):
                continue
            _mount(disk, partition, root)
            if (root / "etc/fstab").is_file():
                break
            _run(["umount", str(root)], f"{disk}: umount partition {partition.number}")
        else:
            raise CloudError(f"{disk}: no partition holds a root file system with /etc/fstab "
                             "| fix: build the cell again; its disk is not a system")
        for spec, mount_point, _ in fstab_mounts((root / "etc/fstab").read_text()):
            partition = partition_of(spec, found)
            if mount_point != "/" and partition is not None:
                _mount(disk, partition, root / mount_point.lstrip("/"))
        _run(["tar", "--create", "--file", str(partial), *TAR_OPTIONS, "-C", str(root), "."], f"{disk}: tar")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
        if root.exists():
            subprocess.run(["umount", "--recursive", "--quiet", str(root)], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def root_tarball(disk: Path, target: Path) -> Path:
    """`target` (`<name>.tar.gz`) from a raw disk: this module run under `unshare --mount` (root only:
    loop devices), so that every mount it makes is gone when it ends."""
    if shutil.which("unshare") is None:
        raise CloudError("unshare not found | fix: apt-get install util-linux")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-m", __name__,
                             str(disk), str(target)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = one_line(result.stderr or result.stdout)[-400:]
        raise CloudError(f"{disk}: the MAAS root tarball failed: {last} | fix: run the build as root "
                         "(it loop-mounts the disk read-only in a private mount namespace)")
    return target


def main(argv: list[str]) -> int:
    try:
        write_tarball(Path(argv[0]), Path(argv[1]))
    except CloudError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
