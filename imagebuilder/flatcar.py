"""Flatcar baked through its own mechanism: the Kubernetes sysext (imagebuilder/sysext.py) placed in
the image, merged by systemd-sysext at every boot, with kubelet enabled. No Ansible, no Python on
the node, nothing written into /usr (Flatcar's /usr is read-only and dm-verity checked).

What a baked image holds (``node_entries``), the same on every route:

- ``/opt/extensions/kubernetes/kubernetes-v<version>-<arch>.raw``: the sysext, byte for byte what
  ``imagebuilder sysext build`` makes from the same pins;
- ``/etc/extensions/kubernetes.raw`` -> that image (what systemd-sysext merges);
- ``/etc/systemd/system/multi-user.target.wants/kubelet.service`` -> the unit the sysext carries.

Updates stay Flatcar's: the OS from its update engine, Kubernetes by a new image (or the sysupdate
transfer file of ``sysext build --base-url``, added by the node's own Ignition config).

Two routes put them there:

- **the local build** (qemu, and raw, kubevirt, OVA from it): the vendor's qemu disk
  (``flatcar_production_qemu_image.img``, checked against the sha512 of the ``.DIGESTS`` file beside
  it), its ROOT partition (GPT name ``ROOT``, ext4) written with ``debugfs`` at the partition's
  offset: no mount, no loop device, no VM. The disk is otherwise the vendor's, so Ignition runs at the
  node's first boot with the node's own config (the first-boot flag is untouched);
- **the Packer builders**: the built sysext uploaded into a Flatcar the builder booted (installed
  from the ISO on vSphere and Proxmox, Flatcar's OpenStack image on Nutanix) or, on Hetzner Cloud,
  written onto the ROOT partition of a disk ``flatcar-install`` just wrote from the rescue system;
  then the build's traces removed and the first-boot flag set so that Ignition runs again for the
  node (``packer_commands``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from imagebuilder import procs, sysext
from imagebuilder.atomicfile import replacing
from imagebuilder.cache import cache_dir
from imagebuilder.downloads import fetch_all
from imagebuilder.errors import UserError

if TYPE_CHECKING:
    from imagebuilder.build import Job, Outcome

BUILDER = "flatcar"  # the executor of the local Flatcar bake (build.Job.builder)
BUILDER_TYPE = "imagebuilder-flatcar"  # builder_type in its packer-manifest.json
ROOT_PARTITION = "ROOT"  # the GPT partition name of Flatcar's root file system (ext4, partition 9)
SECTOR = 512
DIGESTS_SUFFIX = ".DIGESTS"  # the vendor's checksum file beside each image (MD5, SHA1, SHA512 sections)
VERSION_FILE = "version.txt"  # FLATCAR_VERSION=... in each release directory (`current` moves)
UNIT_DIR = "/usr/lib/systemd/system"  # where the sysext's kubelet.service is, once merged
KUBELET_WANTS = "/etc/systemd/system/multi-user.target.wants/kubelet.service"
FIRST_BOOT_FLAG = "/boot/flatcar/first_boot"  # Ignition runs at the next boot when it exists
UPLOAD = "/tmp/kubernetes-sysext.raw"  # where the Packer builds upload the sysext
BUILD_IGNITION = "ignition.json"  # the build's Ignition config, in the cell's served directory
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class NodeEntry:
    """One thing the bake writes into the node's root file system."""

    path: str
    kind: Literal["dir", "file", "link"]
    target: str = ""  # a link's target
    mode: int = 0o755


def sysext_file_name(kubernetes_version: str, arch: str) -> str:
    return sysext.image_name(kubernetes_version, arch)


def node_entries(image_name: str) -> list[NodeEntry]:
    """The directories, the sysext and the links a baked Flatcar has, parents first."""
    image = f"{sysext.NODE_IMAGE_DIR}/{image_name}"
    directories = sorted({parent for path in (image, sysext.NODE_SYMLINK, KUBELET_WANTS)
                          for parent in _parents(path)}, key=lambda p: (p.count("/"), p))
    return [*(NodeEntry(path, "dir") for path in directories),
            NodeEntry(image, "file", mode=0o644),
            NodeEntry(sysext.NODE_SYMLINK, "link", target=image),
            NodeEntry(KUBELET_WANTS, "link", target=f"{UNIT_DIR}/kubelet.service")]


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[:index]) for index in range(1, len(parts) + 1)]


# -- the vendor's disk --------------------------------------------------------------------------


def parse_digests(text: str) -> dict[str, dict[str, str]]:
    """Flatcar's DIGESTS file: `# <ALGO> HASH` headers, each followed by `<hex>  <file>` lines ->
    file name -> algorithm (lower case) -> hex digest."""
    found: dict[str, dict[str, str]] = {}
    algorithm = ""
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "#" and words[2] == "HASH":
            algorithm = words[1].lower()
        elif len(words) == 2 and algorithm and all(c in "0123456789abcdefABCDEF" for c in words[0]):
            found.setdefault(words[1].lstrip("*"), {})[algorithm] = words[0].lower()
    return found


def parse_version(text: str) -> str:
    """FLATCAR_VERSION of a release directory's version.txt."""
    for line in text.splitlines():
        name, _, value = line.strip().partition("=")
        if name == "FLATCAR_VERSION" and value:
            return value
    raise UserError(f"{VERSION_FILE}: no FLATCAR_VERSION= line | fix: check the Flatcar mirror (mirrors.flatcar)")


def release_url(url: str, version: str) -> str:
    """The image's URL in its release's own directory (`current/` names a release that moves)."""
    directory, _, name = url.rpartition("/")
    channel_dir, _, _ = directory.rpartition("/")
    return f"{channel_dir}/{version}/{name}"


def base_image(url: str, sha512: str, cache: Path | None = None) -> Path:
    """The vendor's qemu disk (a qcow2 despite its `.img` name), downloaded once and checked against
    its sha512; cached under `<cache>/base/flatcar/<sha512 head>/`."""
    if len(sha512) != 128 or any(c not in "0123456789abcdef" for c in sha512):
        raise UserError(f"{url}: sha512 {sha512!r} is not 128 hex digits | fix: plan again (it reads the DIGESTS file)")
    root = (cache / "base") if cache else cache_dir("base")
    dest = root / "flatcar" / sha512[:32] / (Path(urllib.parse.urlparse(url).path).name or "flatcar.img")
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha512()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, replacing(dest, binary=True) as out:  # noqa: S310
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != sha512:
                raise UserError(f"{url}: sha512 is {digest.hexdigest()}, expected {sha512} (its DIGESTS file) "
                                "| fix: plan again, or check the mirror")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"cannot download {url}: {reason} | fix: set mirrors.flatcar to a reachable mirror") from None
    return dest


def fetch_text(url: str) -> str | None:
    """A small file of the release server; None when it is not there (404/410)."""
    from imagebuilder.baseimages import Unreachable

    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (http(s) URLs)
            return bytes(response.read()).decode(errors="replace")
    except urllib.error.HTTPError as error:
        if error.code in (404, 410):
            return None
        raise Unreachable(f"{url}: HTTP {error.code} | fix: check mirrors.flatcar") from None
    except (urllib.error.URLError, OSError) as error:
        raise Unreachable(f"{url}: unreachable ({getattr(error, 'reason', error)}) | fix: set mirrors.flatcar to a "
                          "reachable mirror, or plan with --offline") from None


def resolve_release(resolver, cell, cloud: str, url: str) -> dict[str, str]:
    """What `url` (an image of a channel's `current/`) names now: the release (version.txt beside it),
    the image's sha512 (its DIGESTS file) and its URL in the release's own directory."""
    from imagebuilder.baseimages import Resolver, Unreachable

    name = urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]
    digests_url = url + DIGESTS_SUFFIX

    def ask() -> dict[str, str]:
        digests, version = fetch_text(digests_url), fetch_text(urllib.parse.urljoin(url, VERSION_FILE))
        sums = parse_digests(digests or "").get(name, {})
        if version is None or "sha512" not in sums:
            return {}
        return {"sha512": sums["sha512"], "version": parse_version(version)}

    try:
        found = resolver.lookup(cloud, "", {"digests": digests_url}, ask)
    except Unreachable as error:
        raise UserError(str(error)) from None
    if not found:
        raise Resolver.unresolvable(cell, f"{digests_url} (and {VERSION_FILE} beside it) has no sha512 for {name}",
                                    "check the URL in imagebuilder/osinfo.py or mirrors.flatcar")
    return {"sha512": found["sha512"], "file": name, "version": found["version"],
            "url": release_url(url, found["version"])}


def iso_variables(cell, resolved: dict[str, str]) -> tuple[str, str]:
    """(iso_url, iso_checksum) of a cell installed from Flatcar's ISO: the release and sha512 the plan
    resolved, else (planned --offline) the reference, whose checksum Packer reads from the DIGESTS file."""
    if "sha512" in resolved:
        return resolved["url"], f"sha512:{resolved['sha512']}"
    return cell.base_image["iso_url"], cell.base_image["iso_checksum"]


def resolve_base(resolver, cell, cloud: str) -> dict[str, str]:
    """A Packer cloud's Flatcar image (its ISO, or an image it imports) resolved through mirrors.flatcar."""
    url = cell.base_source.get("url") or cell.base_image.get("source") or cell.base_image["iso_url"]
    return resolve_release(resolver, cell, cloud, url)


def base_disk(cell, cancel: threading.Event | None = None) -> Path:
    """The cell's vendor disk: the release and sha512 the plan resolved (read now when planned --offline)."""
    from imagebuilder import baseimages

    resolved = cell.base_image.get("resolved") or baseimages.Resolver().resolve(cell)
    return base_image(release_url(cell.base_source.get("url") or cell.base_image["source"], resolved["version"]),
                      resolved["sha512"])


# -- writing onto the ROOT partition of a disk, offline ----------------------------------------


@dataclass(frozen=True)
class Partition:
    name: str
    start: int  # bytes
    size: int  # bytes


def root_partition(disk: Path) -> Partition:
    """The disk's GPT partition named ROOT (sfdisk reads the table; nothing is mounted)."""
    result = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{disk}: no partition table sfdisk reads ({result.stderr.strip()}) "
                        "| fix: the base must be Flatcar's qemu image")
    table = json.loads(result.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    for entry in table.get("partitions", []):
        if entry.get("name") == ROOT_PARTITION:
            return Partition(ROOT_PARTITION, int(entry["start"]) * sector, int(entry["size"]) * sector)
    raise UserError(f"{disk}: no GPT partition named {ROOT_PARTITION} | fix: the base must be Flatcar's qemu image")


def debugfs_script(entries: list[NodeEntry], sources: dict[str, Path]) -> str:
    """debugfs commands that write the entries (files from `sources`, by node path), owned by root."""
    lines: list[str] = []
    for entry in entries:
        parent, _, name = entry.path.rpartition("/")
        if entry.kind == "dir":
            lines += [f"mkdir {entry.path}"]
        elif entry.kind == "file":
            lines += [f"cd {parent or '/'}", f"rm {name}", f"write {sources[entry.path]} {name}", "cd /"]
        else:
            lines += [f"rm {entry.path}", f"symlink {entry.path} {entry.target}"]
        if entry.kind != "link":
            file_type = 0o040000 if entry.kind == "dir" else 0o100000
            lines += [f"sif {entry.path} mode 0{file_type | entry.mode:o}", f"sif {entry.path} uid 0",
                      f"sif {entry.path} gid 0"]
    return "\n".join(lines) + "\n"


# debugfs carries on after a failed command; these messages are the expected ones (a directory the
# vendor's file system has already, nothing to remove before writing).
_EXPECTED = ("already exists", "File not found by ext2_lookup")


def write_entries(disk: Path, entries: list[NodeEntry], sources: dict[str, Path]) -> Partition:
    """The entries written into the ext4 file system of the raw disk's ROOT partition, then checked:
    e2fsck finds it clean and each entry is there (a file with its size, a link with its target)."""
    partition = root_partition(disk)
    device = f"{disk}?offset={partition.start}"
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
        script.write(debugfs_script(entries, sources))
        script.flush()
        result = subprocess.run(["debugfs", "-w", "-f", script.name, device], capture_output=True, text=True)
    problems = [line for line in result.stderr.splitlines()
                if line.strip() and not line.startswith("debugfs ") and not any(e in line for e in _EXPECTED)]
    if result.returncode != 0 or problems:
        raise UserError(f"{disk}: debugfs could not write the ROOT partition: {(problems or [result.stderr])[0].strip()}")
    check = subprocess.run(["e2fsck", "-fn", device], capture_output=True, text=True)
    if check.returncode != 0:
        raise UserError(f"{disk}: the ROOT file system is not clean after the bake: "
                        f"{(check.stdout + check.stderr).strip().splitlines()[-1]}")
    for entry in entries:
        found = read_entry(disk, partition, entry.path)
        wanted = sources[entry.path].stat().st_size if entry.kind == "file" else None
        if found is None or found[0] != entry.kind or (wanted is not None and found[1] != str(wanted)) \
                or (entry.kind == "link" and found[1] != entry.target):
            raise UserError(f"{disk}: {entry.path} is not on the ROOT partition as written ({found})")
    return partition


def read_entry(disk: Path, partition: Partition, path: str) -> tuple[str, str] | None:
    """(kind, size or link target) of a path in the ROOT partition; None when absent."""
    result = subprocess.run(["debugfs", "-R", f"stat {path}", f"{disk}?offset={partition.start}"],
                            capture_output=True, text=True)
    text = result.stdout
    if "Type:" not in text:
        return None
    kind = text.split("Type:", 1)[1].split()[0]
    if kind == "symlink":
        target = text.split("Fast link dest:", 1)[1].strip().splitlines()[0].strip().strip('"') \
            if "Fast link dest:" in text else ""
        return "link", target
    if kind == "directory":
        return "dir", ""
    size = text.split("Size:", 1)[1].split()[0] if "Size:" in text else ""
    return "file", size


def dump_entry(disk: Path, partition: Partition, path: str, dest: Path) -> Path:
    """A file of the ROOT partition copied out (what a test compares with what was written)."""
    subprocess.run(["debugfs", "-R", f"dump {path} {dest}", f"{disk}?offset={partition.start}"],
                   capture_output=True, text=True, check=True)
    return dest


def bake_disk(base: Path, image: Path, output: Path, run=None) -> list[NodeEntry]:
    """Flatcar's qemu disk `base` with the sysext `image` baked in, as the compressed qcow2 `output`."""
    entries = node_entries(image.name)
    sources = {entry.path: image for entry in entries if entry.kind == "file"}
    raw = output.with_suffix(".raw")
    steps = run or (lambda argv, what: subprocess.run(argv, check=True, capture_output=True))
    try:
        steps(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(base), str(raw)], "qemu-img convert (base)")
        write_entries(raw, entries, sources)
        steps(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(output)], "qemu-img convert")
    finally:
        raw.unlink(missing_ok=True)
    return entries


# -- the sysext of a cell ------------------------------------------------------------------------


def build_sysext(cell, directory: Path, cancel: threading.Event | None = None) -> Path:
    """The cell's Kubernetes sysext (its pinned, mirrored downloads) in `directory`: the same tree,
    time stamps and compression as `imagebuilder sysext build`."""
    wanted = (*sysext.BINARIES, sysext.CNI_DOWNLOAD)
    missing = [name for name in wanted if name not in cell.downloads]
    if missing:
        raise UserError(f"{cell.id}: no pin for {', '.join(missing)} | fix: add them with 'imagebuilder versions update'")
    local = fetch_all({name: cell.downloads[name] for name in wanted})
    request = sysext.SysextRequest(minor=cell.kubernetes, arch=cell.arch)
    epoch = sysext.resolve_source_date_epoch(None)
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / sysext_file_name(cell.kubernetes_version, cell.arch)
    with tempfile.TemporaryDirectory(prefix="imagebuilder-flatcar-") as work:
        root = Path(work) / "root"
        sysext.populate_tree(root, request, local)
        sysext.normalize_tree(root, epoch)
        image.unlink(missing_ok=True)
        sysext.pack_squashfs(root, image, epoch)
    return image


# -- the Packer builders' steps --------------------------------------------------------------------


def place_commands(image_name: str, root: str = "") -> list[str]:
    """Shell commands (run as root) that put the uploaded sysext and the links under `root` ("" for the
    running system, or where the ROOT partition is mounted)."""
    commands = []
    for entry in node_entries(image_name):
        path = f"{root}{entry.path}"
        if entry.kind == "dir":
            commands.append(f"install -d -m 0{entry.mode:o} {path}")
        elif entry.kind == "file":
            commands.append(f"install -m 0{entry.mode:o} {UPLOAD} {path}")
        else:
            commands.append(f"ln -sfn {entry.target} {path}")
    return commands


WAIT_FOR_BOOT = "sudo systemctl is-system-running --wait || true"  # Flatcar has no cloud-init to wait for


def booted_commands(image_name: str, kubernetes_version: str) -> list[str]:
    """In a booted Flatcar: place, merge and check that the merged kubelet is the pinned one."""
    return [WAIT_FOR_BOOT,
            *(f"sudo {command}" for command in place_commands(image_name)),
            f"sudo rm -f {UPLOAD}",
            "sudo systemd-sysext refresh",
            f"kubelet --version | grep -qx 'Kubernetes v{kubernetes_version}'",
            "sudo systemd-sysext unmerge"]


def seal_commands(build_user: str = "") -> list[str]:
    """The build's traces out and Ignition armed for the node's first boot (the build user removed
    too when named: a cloud whose shutdown command removes it names none)."""
    remove = f"; userdel --force --remove {build_user}" if build_user else ""
    return [f"sudo sh -c 'touch {FIRST_BOOT_FLAG}; truncate -s 0 /etc/machine-id{remove}'"]


# Flatcar's installer script (flatcar/init), as Flatcar's docs install from a rescue or live system.
INSTALL_SCRIPT_URL = "https://raw.githubusercontent.com/flatcar/init/flatcar-master/bin/flatcar-install"
INSTALL_SCRIPT = "/root/flatcar-install"
RESCUE_MOUNT = "/mnt/flatcar-root"
BOARD = {"amd64": "amd64-usr", "arm64": "arm64-usr"}  # flatcar-install -B


def rescue_commands(image_name: str, arch: str, oem: str, channel: str) -> list[str]:
    """From a rescue system (as root): Flatcar onto the server's disk, then the bake onto its ROOT
    partition, as the local build does it, before Flatcar ever boots."""
    root = "/dev/disk/by-partlabel/" + ROOT_PARTITION
    return ["apt-get install -y gawk",  # flatcar-install's awk
            f"curl -fsSL --retry 5 -o {INSTALL_SCRIPT} {INSTALL_SCRIPT_URL}",
            f"chmod 0755 {INSTALL_SCRIPT}",
            f"{INSTALL_SCRIPT} -s -o {oem} -C {channel} -B {BOARD[arch]}",
            "udevadm settle",
            f"mkdir -p {RESCUE_MOUNT}",
            f"mount {root} {RESCUE_MOUNT}",
            *place_commands(image_name, RESCUE_MOUNT),
            f"umount {RESCUE_MOUNT}",
            f"rm -f {UPLOAD}"]


# Overwriting a running system (Outscale): Flatcar's generic image, unpacked on a scratch volume, its
# OEM partition given the build's Ignition config, then written over the VM's root disk.
SCRATCH_MOUNT = "/mnt/flatcar-scratch"
OEM_PARTITION = "OEM"  # the GPT partition name of Flatcar's OEM partition (mounted at /usr/share/oem)
OEM_DIR = "/usr/share/oem"
OEM_CONFIG = "config.ign"  # Ignition's config on the OEM partition, read at the first boot
IGNITION_UPLOAD = "/tmp/build-ignition.json"  # where the overwrite's Ignition config is uploaded
# The node's first boot after the bake: the metal platform with its Ignition config from the VM's user
# data (image-builder's oem_id and ignition_config_url of build-osc-flatcar).
METADATA_OEM_ID = "metal"
METADATA_USER_DATA = "http://169.254.169.254/latest/user-data"


def sha512_check(url: str, sha512: str) -> str:
    """The command (in the download's directory) that checks the download against the sha512 the plan
    resolved, or (planned --offline) against the image's SHA512 line in the DIGESTS file beside it."""
    name = url.rsplit("/", 1)[-1]
    if sha512:
        return f"echo '{sha512}  {name}' | sha512sum -c -"
    return (f"curl -fsSL --retry 5 '{url}{DIGESTS_SUFFIX}' "
            f"| awk -v f='{name}' '$1 == \"#\" {{ s = ($2 == \"SHA512\") ; next }} s && $2 == f' | sha512sum -c -")


def overwrite_commands(url: str, sha512: str, root_disk: str) -> list[str]:
    """From the cloud's stock Linux VM (its default user, with sudo; one shell script): Flatcar's
    generic image downloaded to the scratch volume (the VM's other disk) and checked, the build's
    Ignition config (uploaded to IGNITION_UPLOAD) placed on its OEM partition, the image written
    over `root_disk` and the VM rebooted into Flatcar at once (Packer expects the disconnect)."""
    name = url.rsplit("/", 1)[-1]
    image = f"{SCRATCH_MOUNT}/{name.removesuffix('.bz2')}"
    oem = f"{SCRATCH_MOUNT}/oem"
    return ["cloud-init status --wait >/dev/null || true",  # cloud-init's own apt runs first
            "sudo apt-get update -qq",
            "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bzip2",
            f"scratch=$(lsblk -dpno NAME,TYPE | awk -v root='{root_disk}' '$2 == \"disk\" && $1 != root {{ print $1; exit }}')",
            'test -n "$scratch"',
            'sudo mkfs.ext4 -q "$scratch"',
            f"sudo mkdir -p {SCRATCH_MOUNT}",
            f'sudo mount "$scratch" {SCRATCH_MOUNT}',
            f"sudo chown \"$(id -u)\" {SCRATCH_MOUNT}",
            f"curl -fsSL --retry 5 -o {SCRATCH_MOUNT}/{name} '{url}'",
            f"(cd {SCRATCH_MOUNT} && {sha512_check(url, sha512)})",
            f"bunzip2 {SCRATCH_MOUNT}/{name}",
            f"loop=$(sudo losetup --find --show --partscan {image})",
            "sudo udevadm settle",
            f"oem=$(lsblk -lnpo NAME,PARTLABEL \"$loop\" | awk '$2 == \"{OEM_PARTITION}\" {{ print $1 }}')",
            'test -n "$oem"',
            f"mkdir -p {oem}",
            f'sudo mount "$oem" {oem}',
            f"sudo install -m 0600 {IGNITION_UPLOAD} {oem}/{OEM_CONFIG}",
            f"sudo umount {oem}",
            'sudo losetup --detach "$loop"',
            f"rm -f {IGNITION_UPLOAD}",
            # One root shell, in memory: nothing is read from the root disk once dd has begun.
            f"sudo sh -c 'dd bs=1M if={image} of={root_disk} conv=fdatasync status=none && "
            "echo 1 > /proc/sys/kernel/sysrq && echo b > /proc/sysrq-trigger'"]


def metadata_ignition_commands() -> list[str]:
    """In the booted Flatcar of an overwrite: the build's Ignition config off the OEM partition (it
    holds the build key), and the node's first boot told to read its own from the VM's user data."""
    append = f'\\"\\$linux_append ignition.config.url={METADATA_USER_DATA}\\"'  # grub's variable, not the shell's
    return [f"sudo rm -f {OEM_DIR}/{OEM_CONFIG}",
            f"printf '%s\\n' 'set oem_id=\"{METADATA_OEM_ID}\"' \"set linux_append={append}\" "
            f"| sudo tee -a {OEM_DIR}/grub.cfg >/dev/null"]


def build_ignition(build_user: str, public_key: str) -> dict:
    """The Ignition config (3.3.0) a Packer build boots Flatcar with: the build user, its key and sudo
    (Flatcar's sudo group), and no OS update or reboot while the image is being made."""
    return {"ignition": {"version": sysext.IGNITION_VERSION},
            "passwd": {"users": [{"name": build_user, "groups": ["sudo"], "sshAuthorizedKeys": [public_key]}]},
            "systemd": {"units": [{"name": "update-engine.service", "mask": True},
                                  {"name": "locksmithd.service", "mask": True}]}}


BUILD_TEMPLATE = "flatcar-build.pkr.hcl.j2"  # in imagebuilder/flatcar_packer/
TEMPLATE_DIR = Path(__file__).parent / "flatcar_packer"
SYSEXT_DIR = "sysext"  # in the cell's build directory


def packer_context(cell, first: list[str], last: list[str], install: dict | None = None) -> dict:
    """What a cloud's template_context returns for a Flatcar bake cell: the Flatcar build template
    (the shared one with the upload), no roles, no cloud-init to wait for, these steps. `install`:
    the steps that make the machine Flatcar before the upload ({"ignition": the build's Ignition
    config in the cell's directory, "commands": overwrite_commands}); Packer reconnects after them."""
    name = sysext_file_name(cell.kubernetes_version, cell.arch)
    flatcar = {"source": f"{SYSEXT_DIR}/{name}", "destination": UPLOAD}
    if install:
        flatcar["install"] = {**install, "ignition_destination": IGNITION_UPLOAD}
    return {"build_template": BUILD_TEMPLATE, "provision_node": False, "wait_for_cloud_init": False,
            "provision_first": first, "provision_last": last, "flatcar": flatcar}


def baked_by_packer(cell) -> bool:
    return cell.os_info.family == "flatcar" and cell.strategy == "bake"


def unbaked(cell) -> UserError:
    """A Flatcar bake cell on a cloud whose folder does not bake Flatcar (its template_context gives no
    build_template): the roles would run on an OS without Python or a package manager."""
    return UserError(f"{cell.id}: {cell.cloud} does not bake Flatcar (no Flatcar bake in its folder) | fix: "
                     f"leave {cell.os} on {cell.cloud} to the sysext strategy, or exclude {{os: {cell.os}, "
                     f"cloud: {cell.cloud}}}")



def prepare_packer(job: Job) -> Path:
    """Before Packer: the cell's sysext where its template uploads it from."""
    return build_sysext(job.cell, job.directory / SYSEXT_DIR, job.cancel)


# -- the local build's executor --------------------------------------------------------------------


class FlatcarExecutor:
    """The Scheduler's executor for the local Flatcar cells: the sysext, the vendor disk with it
    baked in as `output/<image name>.qcow2`, and packer-manifest.json as the offline build writes it."""

    def __call__(self, job: Job, cancel: threading.Event) -> Outcome:
        from imagebuilder.build import Outcome, _tail

        with job.log_path.open("ab") as log:
            log.write(f"\n=== attempt {job.attempts}: Flatcar bake ({BUILDER})\n".encode())
            log.flush()
            try:
                qcow2 = bake_local(job, cancel, log)
            except procs.Cancelled:
                return Outcome(ok=False, output_tail=_tail(job.log_path), cancelled=True)
            except (RuntimeError, OSError, UserError, subprocess.CalledProcessError) as exc:
                log.write(f"==> flatcar: error: {exc}\n".encode())
                log.flush()
                return Outcome(ok=False, output_tail=_tail(job.log_path))
            log.write(f"==> flatcar: wrote {qcow2.relative_to(job.directory)}\n".encode())
        return Outcome(ok=True, output_tail=_tail(job.log_path))


def bake_local(job: Job, cancel: threading.Event, log) -> Path:
    from imagebuilder import offline

    def run(argv: list[str], what: str) -> None:
        log.write(f"--- {what}\n".encode())
        log.flush()
        result = procs.run(argv, cancel=cancel, log=log)
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {result.returncode})")

    cell = job.cell
    # The vendor's disk, or the disk of the image the cell is built on (the ova vmx flavour's base OVA).
    base = offline.built_on_path(job) if offline.built_on_image(cell) else base_disk(cell, cancel)
    timestamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    from imagebuilder.clouds import registry

    name = f"{registry.get(cell.cloud).image_name_prefix(cell)}{timestamp}"
    output = job.directory / "output"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir()
    qcow2 = output / f"{name}.qcow2"
    if offline.os_alone(cell):  # the ova base flavour: the disk as it is, no sysext
        log.write(f"==> flatcar: the OS alone, {base.name} without the Kubernetes sysext\n".encode())
        run(["qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", str(base), str(qcow2)], "qemu-img convert")
        offline.write_manifest(job, qcow2, name, timestamp)
        return qcow2
    image = build_sysext(cell, job.directory / "sysext", cancel)
    log.write(f"==> flatcar: {image.name} (sha256 {hashlib.sha256(image.read_bytes()).hexdigest()})\n".encode())
    for entry in bake_disk(base, image, qcow2, run=run):
        log.write(f"==> flatcar: ROOT {entry.kind} {entry.path}{' -> ' + entry.target if entry.target else ''}\n".encode())
    offline.write_manifest(job, qcow2, name, timestamp)
    return qcow2
