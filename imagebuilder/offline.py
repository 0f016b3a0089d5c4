"""The offline local build: the roles applied to a copy of the base root file system, no VM.

What `packer build` of the qemu template does inside a TCG guest, done on the host the way
mkosi, kiwi and diskimage-builder do it:

1. copy the cached base tree (``distributions/debian.py`` keeps it next to the base disk);
2. ``ansible-playbook ansible/node.yml`` into it through Ansible's chroot connection, with the
   cell's ``ansible-vars.json`` (the file render writes for Packer) plus what says "this is a
   tree, not a running system" (``imagebuilder_apply_runtime: false``);
3. GRUB: the modules, a core image embedded after the MBR and ``update-grub``, which reads
   ``/etc/default/grub*`` for the kernel command line as it does in the Packer build;
4. the disk as the base disk is made (MBR, ``mke2fs -d`` at an offset, no loop devices),
   sized as the Packer build sizes it, then a compressed qcow2;
5. ``packer-manifest.json`` in the shape Packer's manifest post-processor writes, so the
   artifact record, the boot test, the catalogue and the skip on the next run are the same.

Steps that need /proc, /sys and /dev in the tree run in a private mount namespace: the
mounts go away with the step, even when it is killed. Debian bases only: the tree is what
makes it possible (vendor cloud images are disk files).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from imagebuilder import attest, procs, render
from imagebuilder.atomicfile import write_atomically
from imagebuilder.build import Job, Outcome
from imagebuilder.clouds import registry
from imagebuilder.clouds.local import local_image_id
from imagebuilder.config import ANSIBLE_DIR
from imagebuilder.distributions import debian
from imagebuilder.errors import UserError
from imagebuilder.metadata import tag_key
from imagebuilder.planner import VARIANT_SOURCE

BUILDER = "offline"
BUILDER_TYPE = "imagebuilder-offline"  # builder_type in the manifest (Packer's is "qemu")
STAGES_FILE = "offline-stages.json"
# The tree is a tree: no modprobe, sysctl, systemctl or fstrim against the build host.
TREE_VARS = {"imagebuilder_apply_runtime": False, "validate_runtime_checks": False}
# Daemons a package installs must not start on the build host (invoke-rc.d honours this).
POLICY_RC_D = "usr/sbin/policy-rc.d"
GRUB_DIR = "usr/lib/grub/i386-pc"
GRUB_CORE_MODULES = ("biosdisk", "part_msdos", "ext2", "search")
# boot.img: the code before the disk signature; its drive check is a jump that grub-bios-setup
# turns into two NOPs for hard disks (buggy BIOSes pass a wrong boot drive).
BOOT_CODE_SIZE = 440
BOOT_DRIVE_CHECK = 0x66
# What the image's disk is when it boots: the device names update-grub writes into grub.cfg.
TARGET_DISK = "/dev/vda"
TARGET_ROOT = "/dev/vda1"
VIRTIO_BLOCK_MAJOR = 254
# The `efi` variant (config: Variant.build firmware): Debian's signed shim and GRUB, as its own
# UEFI cloud images carry them, installed into the tree in place of grub-pc.
EFI_PACKAGES = ("grub-efi-amd64", "grub-efi-amd64-signed", "shim-signed")
EFI_GRUB_DIR = "usr/lib/grub/x86_64-efi"
# In the tree, what goes onto the EFI system partition (the removable-media path firmware without
# boot entries starts, and Debian's own directory), as grub-install --uefi-secure-boot lays it out.
EFI_BINARIES = {"shimx64.efi": "usr/lib/shim/shimx64.efi.signed", "mmx64.efi": "usr/lib/shim/mmx64.efi.signed",
                "grubx64.efi": "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"}
EFI_BOOT_NAMES = {"shimx64.efi": "BOOTX64.EFI"}  # shim is what EFI/BOOT/ starts


def os_alone(cell) -> bool:
    """The cell's image is the OS alone (Cloud.os_alone: the ova base flavour): no roles, no Kubernetes."""
    return registry.get(cell.cloud).os_alone(cell)


# The disk of the image a cell is built on (built_on_image), in its base/ directory: the cloud's
# prepare puts it there (the ova vmx flavour: clouds/ova built_on_disk); Packer boots it, or the
# Flatcar bake writes onto it.
BUILT_ON_DISK = "built-on.qcow2"


def built_on_path(job: Job) -> Path:
    return job.directory / "base" / BUILT_ON_DISK


def built_on_image(cell) -> bool:
    """The cell starts from an image built here (Variant.built_on: the ova vmx flavour), a disk
    without the tree this build copies."""
    return cell.base_image.get("source") == VARIANT_SOURCE


def firmware_of(cell) -> str:
    """"efi" for a cell whose variant asks for UEFI firmware, else "bios" (registry.Cloud.firmware)."""
    return registry.get(cell.cloud).firmware(cell)


class StageTimer:
    """Seconds per stage, written to the cell's offline-stages.json for the bench."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = {}

    def stage(self, name: str, started: float) -> None:
        self.seconds[name] = round(time.monotonic() - started, 1)
        self.path.write_text(json.dumps(self.seconds, indent=2) + "\n")


def base_for(os_id: str, cancel: threading.Event | None = None,
             spec: debian.BaseSpec | None = None) -> debian.BaseDisk:
    """The base whose tree the offline build copies (``spec``: the cell's, see debian.spec_for)."""
    if os_id != debian.OS_ID:
        raise UserError(f"{os_id}: the offline build needs a base root file system, which only "
                        f"{debian.OS_ID} has; set clouds.qemu.builder: packer for this OS")
    return debian.base_disk(spec, cancel=cancel)


def supports(os_id: str) -> bool:
    return os_id == debian.OS_ID


# --- the mount namespace a chroot step runs in ---------------------------------------------

_DEVICES = (("null", "c", 1, 3), ("zero", "c", 1, 5), ("full", "c", 1, 7), ("random", "c", 1, 8),
            ("urandom", "c", 1, 9), ("tty", "c", 5, 0))


def namespace_script(tree: Path, root_uuid: str, binds: Sequence[tuple[Path, str]] = ()) -> str:
    """Shell run by ``unshare --mount``: /proc, /sys and a private /dev in ``tree``, then "$@".

    /dev is a tmpfs with the usual nodes plus the image's own disk as the booted machine will
    see it (``/dev/vda1``, ``/dev/disk/by-uuid/<root>``), which update-grub looks for before it
    writes ``root=UUID=``. Nothing of the host's /dev is reachable from the chroot.
    """
    t = str(tree)
    lines = ["set -eu", f"mount -t proc proc '{t}/proc'", f"mount -t sysfs sysfs '{t}/sys'",
             f"mount -t tmpfs -o mode=755,size=8m dev '{t}/dev'"]
    for name, kind, major, minor in _DEVICES:
        lines.append(f"mknod -m 666 '{t}/dev/{name}' {kind} {major} {minor}")
    lines += [
        f"mkdir -p '{t}/dev/pts' '{t}/dev/shm' '{t}/dev/disk/by-uuid'",
        f"mount -t devpts -o newinstance,ptmxmode=666 devpts '{t}/dev/pts'",
        f"ln -s pts/ptmx '{t}/dev/ptmx'",
        f"ln -s /proc/self/fd '{t}/dev/fd'",
        f"mknod -m 660 '{t}{TARGET_DISK}' b {VIRTIO_BLOCK_MAJOR} 0",
        f"mknod -m 660 '{t}{TARGET_ROOT}' b {VIRTIO_BLOCK_MAJOR} 1",
        f"ln -s ../../{Path(TARGET_ROOT).name} '{t}/dev/disk/by-uuid/{root_uuid}'",
    ]
    for source, inside in binds:
        lines.append(f"mount --bind '{source}' '{t}/{inside.lstrip('/')}'")
    lines.append('exec "$@"')
    return "\n".join(lines)


def in_namespace(tree: Path, root_uuid: str, argv: Sequence[str], binds: Sequence[tuple[Path, str]] = ()) -> list[str]:
    return [*procs.PRIVATE_MOUNTS, "sh", "-c", namespace_script(tree, root_uuid, binds), "namespace", *argv]


def grub_probe_answers(root_uuid: str, firmware: str = "bios") -> str:
    """A grub-probe for update-grub in the chroot: the facts of the disk being assembled
    (an MBR disk, or for ``firmware`` "efi" the GPT one; the root is partition 1 of both).

    The real grub-probe finds them by opening the block device under / (the build host's,
    in a chroot). update-grub only asks these questions; anything else is an error.
    """
    table = "gpt" if firmware == "efi" else "msdos"
    answers = {"device": TARGET_ROOT, "fs_uuid": root_uuid, "fs": "ext2", "partmap": table,
               "abstraction": "", "compatibility_hint": f"hd0,{table}1", "hints_string": "",
               "drive": f"(hd0,{table}1)", "disk": TARGET_DISK, "partuuid": ""}
    cases = "".join(f"    {name}) echo '{value}' ;;\n" for name, value in answers.items())
    return ("#!/bin/sh\n# imagebuilder: the offline build's grub-probe (bind-mounted for update-grub only)\n"
            "target=\nfor arg; do case $arg in --target=*) target=${arg#--target=} ;; esac; done\n"
            "prev=\nfor arg; do [ \"$prev\" = -t ] || [ \"$prev\" = --target ] && target=$arg; prev=$arg; done\n"
            f"case $target in\n{cases}    *) echo \"grub-probe: $target: not known offline\" >&2; exit 1 ;;\nesac\n")


# --- the build -------------------------------------------------------------------------


class OfflineBuild:
    """One offline build of a qemu cell in ``job.directory``; the executor's work."""

    def __init__(self, job: Job, cancel: threading.Event, log) -> None:
        self.job = job
        self.cancel = cancel
        self.log = log
        self.work = job.directory / "offline"
        self.tree = self.work / "root"
        self.timer = StageTimer(job.directory / STAGES_FILE)
        self.firmware = firmware_of(job.cell)

    def say(self, text: str) -> None:
        self.log.write(f"==> offline: {text}\n".encode())
        self.log.flush()

    def run(self, argv: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
        self.log.write(f"--- {what}\n".encode())
        self.log.flush()
        result = procs.run(argv, cancel=self.cancel, log=self.log, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {result.returncode})")

    def build(self) -> Path:
        cell = self.job.cell
        began = datetime.now(timezone.utc)
        started = time.monotonic()
        base = base_for(cell.os, self.cancel, debian.spec_for(cell.base_image, cell.base_source))
        self.timer.stage("base", started)
        self.clean()
        self.work.mkdir(parents=True)

        started = time.monotonic()
        self.say(f"copying the base tree {base.tree}")
        self.run(["cp", "-a", "--reflink=auto", f"{base.tree}/.", f"{self.tree}/"], "copy the base tree")
        self.timer.stage("copy", started)
        if self.firmware == "efi":
            started = time.monotonic()
            self.install_efi_packages(base.root_uuid)
            self.timer.stage("efi packages", started)

        timestamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
        if not os_alone(cell):  # the OS alone (the ova base flavour) gets no roles
            started = time.monotonic()
            self.apply_roles(base.root_uuid, timestamp)
            self.timer.stage("ansible", started)

        started = time.monotonic()
        name = f"{render.packer_variables(cell, self.job.directory)['image_name_prefix']}{timestamp}"
        sbom_file = self.work / f"{name}.sbom"
        self.say("SBOM from the tree's package database and installed release files")
        sbom_sha256 = attest.write_sbom_of_tree(self.tree, sbom_file, cell, name, timestamp)
        self.timer.stage("sbom", started)

        started = time.monotonic()
        if self.firmware == "efi":
            esp = self.install_grub_efi(base.root_uuid)
        else:
            self.install_grub(base.root_uuid)
        self.timer.stage("grub", started)

        started = time.monotonic()
        raw = self.work / "disk.raw"
        size = int(cell.settings["disk_size_mb"]) * 1024**2
        if self.firmware == "efi":
            self.say(f"assembling the disk ({size // 1024**2} MiB, GPT: the EFI system partition at "
                     f"{debian.ESP_START}, ext4 at {debian.EFI_ROOT_START})")
            debian.write_efi_disk(self.tree, esp, raw, size, base.root_uuid, self.cancel)
        else:
            self.say(f"assembling the disk ({size // 1024**2} MiB, ext4 at {debian.PARTITION_START})")
            debian.write_partitioned_disk(self.tree, raw, size, base.root_uuid, self.cancel)
            self.embed_grub(raw)
        debian.remove_tree(self.tree)
        self.timer.stage("disk", started)

        started = time.monotonic()
        output = self.job.directory / "output"
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir()
        qcow2 = output / f"{name}.qcow2"
        self.say(f"writing {qcow2.relative_to(self.job.directory)}")
        self.run(["qemu-img", "convert", "-c", "-m", "2", "-W", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
                 "qemu-img convert")
        raw.unlink()
        self.timer.stage("qcow2", started)

        started = time.monotonic()
        sbom_target = attest.sbom_path(output, name)
        sbom_file.replace(sbom_target)
        metadata = image_metadata(self.job, timestamp, sbom_sha256)
        invocation = str(uuid.uuid4())
        statement = attest.build_statement(
            cell, image=qcow2, image_ids={"local": local_image_id(cell.build_key)}, metadata=metadata,
            sbom_file=sbom_target, sbom_sha256=sbom_sha256, git_commit=render.git_commit(), base_key=base.key,
            invocation_id=invocation, started=began, finished=datetime.now(timezone.utc), builder=BUILDER)
        signed = attest.write_provenance(statement, attest.provenance_path(output, name))
        self.say(f"provenance signed with key {signed.key_id[:16]}" if signed.signed else attest.UNSIGNED_NOTE)
        self.timer.stage("provenance", started)
        write_manifest(self.job, qcow2, name, timestamp, metadata=metadata, run_uuid=invocation,
                       side_files=[sbom_target, signed.path])
        self.clean()
        return qcow2

    @contextmanager
    def chroot_session(self) -> Iterator[None]:
        """While it lasts, the tree resolves as the host does and starts no daemons."""
        policy = self.tree / POLICY_RC_D
        policy.write_text("#!/bin/sh\n# imagebuilder offline build: start nothing in the chroot\nexit 101\n")
        policy.chmod(0o755)
        resolv = self.tree / "etc/resolv.conf"
        kept_resolv = resolv.read_bytes() if resolv.exists() else b""
        resolv.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv)  # apt in the chroot resolves as the host does
        try:
            yield
        finally:
            policy.unlink(missing_ok=True)
            resolv.unlink(missing_ok=True)
            resolv.write_bytes(kept_resolv)

    def grub_probe(self, root_uuid: str) -> Path:
        probe = self.work / "grub-probe"
        probe.write_text(grub_probe_answers(root_uuid, self.firmware))
        probe.chmod(0o755)
        return probe

    def apply_roles(self, root_uuid: str, timestamp: str) -> None:
        extra = self.work / "offline-vars.json"
        extra.write_text(json.dumps({**TREE_VARS, "imagebuilder_build_timestamp": timestamp}))
        cmd = ["ansible-playbook", str(ANSIBLE_DIR / render.PLAYBOOK), "-i", f"{self.tree},",
               "-c", "community.general.chroot", "-e", "ansible_become=false",
               "-e", "ansible_python_interpreter=/usr/bin/python3",
               "-e", f"@{self.job.directory / 'ansible-vars.json'}", "-e", f"@{extra}"]
        env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1"}
        self.say("ansible-playbook node.yml into the tree (chroot connection)")
        try:
            with self.chroot_session():
                self.run(in_namespace(self.tree, root_uuid, cmd), "ansible-playbook", env=env)
        finally:
            shutil.rmtree(self.tree / "root/.ansible", ignore_errors=True)

    def install_efi_packages(self, root_uuid: str) -> None:
        """Debian's signed shim and GRUB for UEFI in place of grub-pc, and the ESP in fstab.

        Their maintainer scripts see no /boot/efi/EFI/debian, so they install nothing onto a
        disk: install_grub_efi lays out the ESP. update-grub, which they run, gets the disk's answers.
        """
        self.say(f"UEFI: apt-get install {' '.join(EFI_PACKAGES)} (in place of grub-pc)")
        script = ("set -e; apt-get update -q; apt-get install -y -q --no-install-recommends "
                  f"{' '.join(EFI_PACKAGES)}; apt-get clean; rm -rf /var/lib/apt/lists/*")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        with self.chroot_session():
            self.run(in_namespace(self.tree, root_uuid, ["chroot", str(self.tree), "sh", "-c", script],
                                  binds=[(self.grub_probe(root_uuid), "/usr/sbin/grub-probe")]),
                     "apt-get install (UEFI boot packages)", env=env)
        (self.tree / debian.ESP_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
        fstab = self.tree / "etc/fstab"
        fstab.write_text(fstab.read_text() + debian.esp_fstab_line(root_uuid))

    def install_grub(self, root_uuid: str) -> None:
        """What ``grub-install`` and ``update-grub`` put in /boot, with the image's own GRUB."""
        target = self.tree / "boot/grub/i386-pc"
        target.mkdir(parents=True, exist_ok=True)
        source = self.tree / GRUB_DIR
        for pattern in ("*.mod", "*.lst"):
            for path in source.glob(pattern):
                shutil.copy2(path, target / path.name)
        early = self.work / "grub-early.cfg"
        early.write_text(f"search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\n")
        shutil.copyfile(early, self.tree / "boot/grub/i386-pc/early.cfg")
        probe = self.grub_probe(root_uuid)
        self.say("grub: core image and update-grub")
        mkimage = ["chroot", str(self.tree), "grub-mkimage", "-O", "i386-pc", "-d", f"/{GRUB_DIR}",
                   "-c", "/boot/grub/i386-pc/early.cfg", "-p", "/boot/grub",
                   "-o", "/boot/grub/i386-pc/core.img", *GRUB_CORE_MODULES]
        self.run(in_namespace(self.tree, root_uuid, mkimage), "grub-mkimage")
        (self.tree / "boot/grub/i386-pc/early.cfg").unlink()
        shutil.copy2(source / "boot.img", target / "boot.img")
        self.run(["chroot", str(self.tree), "grub-editenv", "/boot/grub/grubenv", "create"], "grub-editenv")
        update = ["chroot", str(self.tree), "update-grub"]
        self.run(in_namespace(self.tree, root_uuid, update, binds=[(probe, "/usr/sbin/grub-probe")]),
                 "update-grub")

    def install_grub_efi(self, root_uuid: str) -> Path:
        """The EFI system partition's files (shim, signed GRUB and a grub.cfg that finds the root
        by UUID) in a directory, GRUB's x86_64-efi modules in /boot/grub and update-grub."""
        esp = self.work / "esp"
        stub = (f"search.fs_uuid {root_uuid} root hd0,gpt1\nset prefix=($root)'/boot/grub'\n"
                "configfile $prefix/grub.cfg\n")
        for directory in ("BOOT", "debian"):
            target = esp / "EFI" / directory
            target.mkdir(parents=True, exist_ok=True)
            for name, inside in EFI_BINARIES.items():
                source = self.tree / inside
                if not source.is_file():
                    raise RuntimeError(f"UEFI: /{inside} is not in the tree (from {', '.join(EFI_PACKAGES)})")
                shutil.copyfile(source, target / (EFI_BOOT_NAMES.get(name, name) if directory == "BOOT" else name))
            (target / "grub.cfg").write_text(stub)
        modules = self.tree / "boot/grub/x86_64-efi"
        modules.mkdir(parents=True, exist_ok=True)
        for pattern in ("*.mod", "*.lst"):
            for path in (self.tree / EFI_GRUB_DIR).glob(pattern):
                shutil.copy2(path, modules / path.name)
        self.say("grub (UEFI): the EFI system partition's files and update-grub")
        self.run(["chroot", str(self.tree), "grub-editenv", "/boot/grub/grubenv", "create"], "grub-editenv")
        update = ["chroot", str(self.tree), "update-grub"]
        self.run(in_namespace(self.tree, root_uuid, update,
                              binds=[(self.grub_probe(root_uuid), "/usr/sbin/grub-probe")]), "update-grub")
        return esp

    def embed_grub(self, disk: Path) -> None:
        """boot.img into the MBR (the partition table stays), core.img in the gap after it."""
        boot = bytearray((self.tree / "boot/grub/i386-pc/boot.img").read_bytes())
        core = (self.tree / "boot/grub/i386-pc/core.img").read_bytes()
        if len(core) > debian.PARTITION_START - debian.SECTOR:
            raise RuntimeError(f"core.img ({len(core)} bytes) does not fit before the partition")
        boot[BOOT_DRIVE_CHECK:BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
        # boot.img and diskboot.img default to core.img at sector 1, where it goes.
        with open(disk, "r+b") as fh:
            fh.write(bytes(boot[:BOOT_CODE_SIZE]))
            fh.seek(debian.SECTOR)
            fh.write(core)

    def clean(self) -> None:
        debian.remove_tree(self.work)


def image_metadata(job: Job, timestamp: str, sbom_sha256: str = "") -> dict[str, str]:
    """The image's metadata tags: the cell's, the build time and the SBOM's digest."""
    tags = {**render.cell_metadata(job.cell).to_tags(), "imagebuilder-build-timestamp": timestamp}
    if sbom_sha256:
        tags[tag_key("sbom_sha256")] = sbom_sha256
    return tags


def write_manifest(job: Job, qcow2: Path, image_name: str, timestamp: str, metadata: dict[str, str] | None = None,
                   run_uuid: str | None = None, side_files: Sequence[Path] = ()) -> Path:
    """packer-manifest.json as Packer's manifest post-processor writes it for the qemu template
    (plus the SBOM and provenance files beside the image, when the build wrote them)."""
    cell = job.cell
    metadata = metadata or image_metadata(job, timestamp)
    run_uuid = run_uuid or str(uuid.uuid4())
    manifest = {
        "builds": [{
            "name": "node",
            "builder_type": BUILDER_TYPE,
            "build_time": int(time.time()),
            "files": [{"name": str(path.relative_to(job.directory)), "size": path.stat().st_size}
                      for path in (qcow2, *side_files)],
            "artifact_id": image_name,
            "packer_run_uuid": run_uuid,
            "custom_data": {"metadata": json.dumps(metadata, separators=(",", ":")),
                            "versions": json.dumps(cell.versions, separators=(",", ":")),
                            "image_name": image_name},
        }],
        "last_run_uuid": run_uuid,
    }
    path = job.directory / "packer-manifest.json"
    write_atomically(path, json.dumps(manifest, indent=2) + "\n")
    return path


class OfflineExecutor:
    """The Scheduler's executor for qemu cells the offline builder builds."""

    def __call__(self, job: Job, cancel: threading.Event) -> Outcome:
        from imagebuilder.build import _tail

        with job.log_path.open("ab") as log:
            log.write(f"\n=== attempt {job.attempts}: offline build ({BUILDER})\n".encode())
            log.flush()
            build = OfflineBuild(job, cancel, log)
            try:
                build.build()
            except procs.Cancelled:
                log.write(b"==> offline: cancelled; cleaning up\n")
                log.flush()
                build.clean()
                return Outcome(ok=False, output_tail=_tail(job.log_path), cancelled=True)
            except (RuntimeError, OSError, UserError) as exc:
                log.write(f"==> offline: error: {exc}\n".encode())
                log.flush()
                build.clean()
                return Outcome(ok=False, output_tail=_tail(job.log_path))
            except BaseException:
                build.clean()
                raise
        return Outcome(ok=True, output_tail=_tail(job.log_path))
