"""Debian 12: the cloud-style base disk for the local qemu target, built here from scratch.

``mmdebstrap`` makes the root tree; the tree goes straight into an ext4 file system
inside a partitioned raw disk (``sfdisk`` on the file, ``mke2fs -d -E offset=``): no
loop devices. The disk carries no bootloader yet (the grub packages are installed, the
Packer build runs ``grub-install``), so its first boot is a direct kernel boot with the
kernel and initrd extracted next to it. The tree itself is kept too: the offline build
(imagebuilder/offline.py) applies the roles to a copy of it. Built once per set of inputs,
then cached.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imagebuilder import procs
from imagebuilder.cache import cache_dir
from imagebuilder.errors import UserError
from imagebuilder.osinfo import BASE_MIRRORS

OS_ID = "debian-12"
SUITE = "bookworm"
DEFAULT_MIRROR = BASE_MIRRORS["debian"]
DEFAULT_SECURITY_MIRROR = BASE_MIRRORS["debian_security"]
VARIANT = "minbase"
# Bump when the build recipe below changes in a way that changes the disk.
SCRIPT_VERSION = 4

# The one list of what the base image holds (on top of the minbase variant).
PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "systemd-timesyncd",
    "udev",
    "dbus",
    "kmod",
    "procps",
    "iproute2",
    "netbase",
    "ifupdown",  # cloud-init renders DHCP on the first NIC as /etc/network/interfaces.d
    "isc-dhcp-client",
    "openssh-server",
    "sudo",
    "python3",  # Ansible's interpreter
    "python3-apt",  # Ansible's apt module
    "ca-certificates",
    "cloud-init",
    "cloud-guest-utils",  # growpart: cloud-init grows the root partition to the disk
    "fdisk",
    "e2fsprogs",
    "grub-pc",  # installed onto the disk by the Packer build (grub-install /dev/vda)
)

DISK_SIZE = 4 * 1024**3
PARTITION_START = 1024**2  # 1 MiB: the gap before it holds grub's core.img
SECTOR = 512
FS_LABEL = "root"
# Cloud-init settings of the image (the datasource, users and network come from the cloud).
CLOUD_CFG = (
    "# imagebuilder base image\n"
    "manage_etc_hosts: true\n"
    "locale: C.UTF-8\n"  # no locales package: C.UTF-8 is built into glibc
)
GRUB_DEFAULTS = (
    'GRUB_TIMEOUT=1\n'
    'GRUB_CMDLINE_LINUX_DEFAULT="console=tty0 console=ttyS0,115200"\n'
    'GRUB_TERMINAL="console serial"\n'
    'GRUB_SERIAL_COMMAND="serial --speed=115200"\n'
)


@dataclass(frozen=True)
class BaseSpec:
    """Everything the base disk is built from; its hash is the cache key."""

    suite: str = SUITE
    mirror: str = DEFAULT_MIRROR
    security_mirror: str = DEFAULT_SECURITY_MIRROR
    variant: str = VARIANT
    packages: tuple[str, ...] = PACKAGES
    disk_size: int = DISK_SIZE
    arch: str = "amd64"
    script_version: int = SCRIPT_VERSION
    # The suites' InRelease sha256s resolved at plan time (imagebuilder.baseimages): a new
    # InRelease is a new base. Empty: whatever the mirror serves when the base is first built.
    releases: str = ""

    @property
    def key(self) -> str:
        fields = asdict(self)
        if not fields["releases"]:
            del fields["releases"]  # the key of a base made without resolution stays as it was
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def root_uuid(self) -> str:
        """The root file system's UUID, derived from the key (same inputs, same disk)."""
        return str(uuid.UUID(self.key[:32], version=4))


def spec_for(base_image: dict, base_source: dict[str, str]) -> BaseSpec:
    """The base of a qemu cell: its mirrors, and the InRelease sha256s the plan resolved."""
    releases = (base_image.get("resolved") or {}).get("inrelease_sha256")
    return BaseSpec(mirror=base_source.get("debian", DEFAULT_MIRROR),
                    security_mirror=base_source.get("debian_security", DEFAULT_SECURITY_MIRROR),
                    releases=json.dumps(releases, sort_keys=True) if releases else "")


@dataclass(frozen=True)
class BaseDisk:
    """A built base disk and what a first (direct kernel) boot needs."""

    dir: Path
    key: str
    disk: Path  # raw, one MBR partition holding ext4
    tree: Path  # the same root file system as a directory (read-only: copy it before use)
    kernel: Path
    initrd: Path
    root_uuid: str
    partition_offset: int = PARTITION_START
    manifest: dict = field(default_factory=dict, compare=False)

    @property
    def kernel_cmdline(self) -> str:
        return f"root=UUID={self.root_uuid} ro console=ttyS0,115200"


def is_cached(spec: BaseSpec, cache: Path | None = None) -> bool:
    """Whether the base disk of ``spec`` has been built already."""
    root = (cache / "base") if cache else cache_dir("base")
    return (root / spec.key / "manifest.json").exists()


def base_disk(spec: BaseSpec | None = None, cache: Path | None = None,
              cancel: threading.Event | None = None) -> BaseDisk:
    """The cached base disk for ``spec``, building it first if it is not there yet.

    Output: ``<cache>/base/<key>/{disk.raw,root/,vmlinuz,initrd.img,manifest.json}``, built
    in a temporary directory beside it and renamed into place; concurrent callers wait
    for each other on a lock file. ``cancel`` (or Ctrl-C) stops mmdebstrap and removes
    the partial build.
    """
    spec = spec or BaseSpec()
    root = (cache / "base") if cache else cache_dir("base")
    root.mkdir(parents=True, exist_ok=True)
    final = root / spec.key
    with open(root / f"{spec.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "manifest.json").exists():
            _build(spec, root, final, cancel)
    return _load(final)


def _load(path: Path) -> BaseDisk:
    manifest = json.loads((path / "manifest.json").read_text())
    return BaseDisk(
        dir=path, key=manifest["key"], disk=path / "disk.raw", tree=path / manifest["tree"], kernel=path / "vmlinuz",
        initrd=path / "initrd.img", root_uuid=manifest["root_uuid"],
        partition_offset=manifest["partition_offset"], manifest=manifest,
    )


def _build(spec: BaseSpec, root: Path, final: Path, cancel: threading.Event | None) -> None:
    for tool in ("mmdebstrap", "sfdisk", "mke2fs"):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} is not installed: apt-get install mmdebstrap fdisk e2fsprogs")
    if os.geteuid() != 0:
        raise UserError("building the Debian base disk needs root (mmdebstrap --mode=root): run as root")
    work = root / f".building-{spec.key[:16]}-{os.getpid()}"
    remove_tree(work)
    work.mkdir()
    try:
        timings: dict[str, float] = {}
        started = time.monotonic()
        tree = work / "root"
        try:
            # Its mounts (/proc, /sys, /dev in the tree) live in a namespace of its own.
            _run([*procs.PRIVATE_MOUNTS, *mmdebstrap_command(spec, tree)], "mmdebstrap", cancel=cancel)
        except RuntimeError as exc:
            errors = [line.strip() for line in str(exc).splitlines() if line.startswith("E: ")]
            raise UserError(f"mmdebstrap {spec.suite} from {spec.mirror} failed: {(errors or ['?'])[0]}; "
                            "check that the Debian mirror is reachable") from None
        configure_tree(tree, spec.root_uuid)
        timings["mmdebstrap"] = time.monotonic() - started
        _extract_boot_files(tree, work)
        started = time.monotonic()
        write_partitioned_disk(tree, work / "disk.raw", spec.disk_size, spec.root_uuid, cancel)
        timings["disk"] = time.monotonic() - started
        manifest = {
            "key": spec.key, "os": OS_ID, "spec": asdict(spec), "root_uuid": spec.root_uuid, "tree": "root",
            "partition_offset": PARTITION_START, "disk": "disk.raw", "kernel": "vmlinuz",
            "initrd": "initrd.img", "seconds": {k: round(v, 1) for k, v in timings.items()},
            "built": int(time.time()),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        remove_tree(final)
        work.rename(final)
    except BaseException:
        remove_tree(work)
        raise


def remove_tree(path: Path) -> None:
    """``rm -rf path``, refusing to when something is mounted inside (it would reach the host)."""
    mounted = procs.mounts_under(path) if path.exists() else []
    if mounted:
        raise RuntimeError(f"not removing {path}: {', '.join(mounted)} still mounted")
    shutil.rmtree(path, ignore_errors=True)


def mmdebstrap_command(spec: BaseSpec, dest: Path) -> list[str]:
    """The mmdebstrap call (mmdebstrap cleans the apt caches and lists itself)."""
    sources = [
        f"deb {spec.mirror} {spec.suite} main",
        f"deb {spec.mirror} {spec.suite}-updates main",
        f"deb {spec.security_mirror} {spec.suite}-security main",
    ]
    cmd = [
        "mmdebstrap", f"--variant={spec.variant}", "--mode=root", "--format=directory",
        f"--architectures={spec.arch}", f"--include={','.join(sorted(spec.packages))}",
        # grub-pc asks where to install itself; the Packer build does that, not the chroot.
        "--essential-hook=echo 'grub-pc grub-pc/install_devices_empty boolean true'"
        ' | chroot "$1" debconf-set-selections',
    ]
    return cmd + [spec.suite, str(dest), *sources]


def configure_tree(tree: Path, root_uuid: str) -> None:
    """The cloud-style configuration: fstab by UUID, serial console, identity made at first boot."""
    (tree / "etc/fstab").write_text(f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    (tree / "etc/network/interfaces").write_text(
        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n"
    )
    (tree / "etc/default/grub.d").mkdir(parents=True, exist_ok=True)
    (tree / "etc/default/grub.d/10-imagebuilder.cfg").write_text(GRUB_DEFAULTS)
    (tree / "etc/hostname").write_text("localhost\n")
    # mmdebstrap leaves the build host's resolver here; DHCP writes the instance's at boot.
    (tree / "etc/resolv.conf").unlink(missing_ok=True)
    (tree / "etc/resolv.conf").write_text("")
    (tree / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    (tree / "etc/cloud/cloud.cfg.d/01-imagebuilder.cfg").write_text(CLOUD_CFG)
    # Every instance gets its own identity: systemd makes the machine-id and cloud-init
    # the ssh host keys at first boot.
    (tree / "etc/machine-id").write_text("")
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()


def _extract_boot_files(tree: Path, dest: Path) -> None:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    initrds = sorted((tree / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise RuntimeError(f"expected one kernel and one initrd in {tree}/boot, found {kernels} {initrds}")
    shutil.copyfile(kernels[0], dest / "vmlinuz")
    shutil.copyfile(initrds[0], dest / "initrd.img")


def write_partitioned_disk(tree: Path, disk: Path, size: int, root_uuid: str,
                           cancel: threading.Event | None = None) -> None:
    """A sparse raw disk with one bootable MBR partition (from 1 MiB) holding ``tree`` as ext4."""
    with open(disk, "wb") as fh:
        fh.truncate(size)
    table = f"label: dos\nstart={PARTITION_START // SECTOR}, type=83, bootable\n"
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", str(disk)], "sfdisk", input=table)
    fs_blocks = (size - PARTITION_START) // 4096
    _run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", FS_LABEL, "-U", root_uuid,
         "-d", str(tree), "-E", f"offset={PARTITION_START}", str(disk), str(fs_blocks)],
        "mke2fs", cancel=cancel,
    )


# --- the UEFI layout (the qemu `efi` variant) -------------------------------------------------
# GPT as Debian's and Ubuntu's own cloud images lay it out: the root file system stays
# partition 1 (/dev/vda1, so the grub-probe answers, fstab and growpart are as on BIOS), the EFI
# system partition is partition 15 at the start of the disk, and the root fills the rest but
# the last MiB, where GPT keeps its backup header.
ESP_NUMBER = 15
ESP_START = PARTITION_START
ESP_SIZE = 127 * 1024**2
EFI_ROOT_START = ESP_START + ESP_SIZE  # 128 MiB
GPT_BACKUP_RESERVE = 1024**2
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_LABEL = "EFI"
ESP_MOUNT = "/boot/efi"


def derived_uuid(root_uuid: str, what: str) -> str:
    """A UUID derived from the root's (same inputs, same disk): the GPT's and its partitions'."""
    return str(uuid.UUID(hashlib.sha256(f"{root_uuid}:{what}".encode()).hexdigest()[:32], version=4))


def esp_volume_id(root_uuid: str) -> str:
    """The ESP's FAT volume id (8 hex digits), derived from the root's UUID."""
    return hashlib.sha256(f"{root_uuid}:esp".encode()).hexdigest()[:8].upper()


def esp_fstab_line(root_uuid: str) -> str:
    volume = esp_volume_id(root_uuid)
    return f"UUID={volume[:4]}-{volume[4:]} {ESP_MOUNT} vfat umask=0077 0 1\n"


def efi_partition_table(disk: Path, size: int, root_uuid: str) -> str:
    """The sfdisk script of the UEFI layout (partition numbers named by the ``<disk><n>`` lines)."""
    root_size = size - GPT_BACKUP_RESERVE - EFI_ROOT_START
    if root_size < 1024**3:
        raise UserError(f"a {size // 1024**2} MiB disk leaves the root under 1 GiB beside the "
                        f"{ESP_SIZE // 1024**2} MiB EFI system partition | fix: a larger disk_size_mb")
    return (f"label: gpt\nlabel-id: {derived_uuid(root_uuid, 'gpt')}\n"
            f"{disk}1 : start={EFI_ROOT_START // SECTOR}, size={root_size // SECTOR}, type={LINUX_FS_TYPE}, "
            f"uuid={derived_uuid(root_uuid, 'root-partition')}\n"
            f"{disk}{ESP_NUMBER} : start={ESP_START // SECTOR}, size={ESP_SIZE // SECTOR}, type={ESP_TYPE}, "
            f"uuid={derived_uuid(root_uuid, 'esp-partition')}, name=\"EFI System\"\n")


def write_efi_disk(tree: Path, esp: Path, disk: Path, size: int, root_uuid: str,
                   cancel: threading.Event | None = None) -> None:
    """A sparse raw GPT disk: ``esp`` (a directory: EFI/...) as the FAT32 EFI system partition 15,
    ``tree`` as ext4 in partition 1 from 128 MiB."""
    for tool in ("mkfs.vfat", "mcopy"):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} is not installed: apt-get install dosfstools mtools")
    with open(disk, "wb") as fh:
        fh.truncate(size)
    _run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(disk)], "sfdisk",
         input=efi_partition_table(disk, size, root_uuid))
    image = disk.with_name(disk.name + ".esp")
    image.unlink(missing_ok=True)
    try:
        _run(["mkfs.vfat", "-F", "32", "-n", ESP_LABEL, "-i", esp_volume_id(root_uuid), "-C", str(image),
              str(ESP_SIZE // 1024)], "mkfs.vfat")
        entries = sorted(str(path) for path in esp.iterdir())
        if entries:
            _run(["mcopy", "-s", "-m", "-i", str(image), *entries, "::/"], "mcopy")
        _copy_sparse(image, disk, ESP_START)
    finally:
        image.unlink(missing_ok=True)
    root_size = size - GPT_BACKUP_RESERVE - EFI_ROOT_START
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", FS_LABEL, "-U", root_uuid,
          "-d", str(tree), "-E", f"offset={EFI_ROOT_START}", str(disk), str(root_size // 4096)],
         "mke2fs", cancel=cancel)


def _copy_sparse(source: Path, disk: Path, offset: int, chunk: int = 1024**2) -> None:
    """``source`` into the (fresh, sparse) ``disk`` at ``offset``, skipping its all-zero chunks."""
    zeros = bytes(chunk)
    with open(source, "rb") as reader, open(disk, "r+b") as writer:
        position = offset
        while block := reader.read(chunk):
            if block != zeros[:len(block)]:
                writer.seek(position)
                writer.write(block)
            position += len(block)


def _run(cmd: Sequence[str], what: str, input: str | None = None, cancel: threading.Event | None = None) -> None:
    proc = procs.run(cmd, input=input, cancel=cancel)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.output[-20000:]}")
