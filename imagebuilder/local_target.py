"""The local qemu target around the build: the base disk and the builder before, the boot test after.

The builder: ``clouds.qemu.builder`` (auto: Packer when KVM works, else the offline build of
imagebuilder/offline.py, which needs no VM until the boot test).
Before Packer: the cached base disk (and, for a base without a bootloader, its kernel and
initrd for a direct kernel boot), a throw-away build key and a NoCloud seed that gives the
OS's default user that key, all linked into the cell's `base/` directory; for an OS installed
from the vendor's ISO (osinfo LocalBase "installer"), the key and the installer's kickstart.
After Packer: the qcow2 boots on its own in QEMU, with a fresh throw-away key, and must
pass the checks; a failure fails the cell, so the image is never published.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from imagebuilder import baseimages, immutable, installer, offline, qemu, render, supplied
from imagebuilder.clouds import registry
from imagebuilder.clouds.qemu import bases
from imagebuilder.artifact import Artifact
from imagebuilder.build import Job
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell

# The validate role's settings for an image that has booted (see validate_hook).
BOOTED_VARS = {"validate_hygiene_checks": False, "validate_inactive_services": []}


def _link(source: Path, dest: Path) -> None:
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.symlink_to(source.resolve())


def base_files(cell: Cell, cancel: threading.Event | None = None) -> dict[str, Path]:
    """disk.img (and vmlinuz, initrd.img when the first boot is a direct kernel boot), of exactly
    the base the plan resolved (its InRelease sha256s, or the vendor image's sha256)."""
    local = cell.os_info.local_base
    if local is None:
        raise UserError(f"{cell.os}: the local qemu target has no base image for this OS yet "
                        "(exclude it: exclude: [{os: " + cell.os + ", cloud: qemu}])")
    if local.kind == "rootfs":
        from imagebuilder.distributions import debian

        spec = debian.spec_for(cell.base_image, cell.base_source)
        if not debian.is_cached(spec):
            bases.check_debian_releases(cell)  # the base about to be built is the one planned
        disk = debian.base_disk(spec, cancel=cancel)
        return {"disk.img": disk.disk, "vmlinuz": disk.kernel, "initrd.img": disk.initrd}
    if local.kind == "flatcar":
        from imagebuilder import flatcar

        return {"disk.img": flatcar.base_disk(cell, cancel)}
    if local.kind == "installer":
        return {}  # no disk: Packer downloads the vendor's ISO (checked against its pinned checksum) and installs it
    from imagebuilder.distributions import ubuntu  # the vendor's cloud image, with its own GRUB

    if supplied.is_supplied(cell.base_image):  # the user's download, checked against its sha256
        url, sha256 = supplied.require(cell)
        return {"disk.img": ubuntu.base_image(cell.os, cell.arch, url=url, sha256=sha256).disk}
    # Planned --offline: the image the vendor's checksum file names now.
    resolved = cell.base_image.get("resolved") or baseimages.Resolver().resolve(cell)
    url = cell.base_source.get("url") or cell.base_image["source"]
    url = url.rsplit("/", 1)[0] + "/" + resolved["file"]  # the fixed name of the same image
    return {"disk.img": ubuntu.base_image(cell.os, cell.arch, url=url, sha256=resolved["sha256"]).disk}


def accelerator_for(job: Job, files: dict[str, Path]) -> str:
    wanted = job.cell.settings.get("accelerator", "auto")
    if wanted != "auto":
        return wanted
    return qemu.accelerator(files.get("vmlinuz"), files.get("initrd.img"))


def efi_unbuilt(cell: Cell) -> str | None:
    """Why this UEFI (efi variant) cell cannot be built, or None. The offline build makes the GPT
    disk with its EFI system partition from a base tree; a vendor image that boots UEFI as it is
    (osinfo LocalBase.uefi: Ubuntu's) is built as its BIOS cell is and boot-tested under OVMF.
    The Packer template's Debian base boots BIOS only."""
    if offline.firmware_of(cell) != "efi" or efi_from_vendor_image(cell):
        return None
    if cell.settings.get("builder", "auto") != "packer" and offline.supports(cell.os):
        return None
    # An OS without a base tree (a vendor image, an ISO install) has no builder to switch to.
    switch = f"clouds.{cell.cloud}.builder: auto or offline, or " if offline.supports(cell.os) else ""
    return (f"{cell.id}: the efi variant is made by the offline builder only, from {offline.debian.OS_ID}'s base "
            f"tree (the Packer template boots BIOS), or from a vendor image with an EFI system partition "
            f"| fix: {switch}exclude {{cloud: {cell.cloud}, os: {cell.os}, variant: {cell.variant}}}")


def efi_from_vendor_image(cell: Cell) -> bool:
    """An efi cell whose base, the vendor's disk, boots UEFI already: any builder makes it."""
    local = cell.os_info.local_base
    return offline.firmware_of(cell) == "efi" and local is not None and local.uefi


def builder_for(job: Job, files: dict[str, Path]) -> str:
    """The cell's builder, with "auto" resolved: offline unless KVM works (or the OS has no tree).
    An efi variant cell is built offline (efi_unbuilt), unless its vendor image boots UEFI; a cell built on
    an image built here, by Packer."""
    wanted = job.cell.settings.get("builder", "auto")
    if job.cell.os_info.family == "flatcar":
        return flatcar_builder(job.cell)
    if immutable.of(job.cell):
        reason = immutable.unbuilt(job.cell)
        if reason:
            raise UserError(reason)
        return "packer"  # the role repartitions the build machine's boot disk
    if offline.built_on_image(job.cell):
        if wanted == offline.BUILDER:
            raise UserError(f"{job.cell.id}: built on the {job.cell.base_image['variant']} image "
                            f"({job.cell.base_image['cell']}), a disk with no tree for the offline build "
                            f"| fix: clouds.{job.cell.cloud}.builder: auto or packer")
        return "packer"
    if offline.firmware_of(job.cell) == "efi" and not efi_from_vendor_image(job.cell):
        reason = efi_unbuilt(job.cell)
        if reason:
            raise UserError(reason)
        return offline.BUILDER
    if wanted == offline.BUILDER and not offline.supports(job.cell.os):
        offline.base_for(job.cell.os)  # raises the one-line error naming the setting
    if wanted != "auto":
        return wanted
    if not offline.supports(job.cell.os):
        return "packer"
    return "packer" if accelerator_for(job, files) == "kvm" else offline.BUILDER


def flatcar_builder(cell: Cell) -> str:
    """Flatcar's local cells are baked by imagebuilder.flatcar (the sysext onto the vendor's disk)."""
    from imagebuilder import flatcar

    if cell.settings.get("builder", "auto") not in ("auto", flatcar.BUILDER) or offline.firmware_of(cell) == "efi":
        raise UserError(f"{cell.id}: Flatcar's local image is baked by the {flatcar.BUILDER} builder (the sysext "
                        f"written onto the vendor's BIOS/UEFI disk), not by {cell.settings.get('builder')} "
                        f"| fix: clouds.{cell.cloud}.builder: auto, or exclude {{os: {cell.os}, cloud: {cell.cloud}}}")
    return flatcar.BUILDER


def prepare(job: Job, files: dict[str, Path] | None = None) -> None:
    """The builder, and for Packer the base files (``files``, else the cell's base_files), a key and a seed."""
    if job.cell.os_info.family == "flatcar":
        job.builder = flatcar_builder(job.cell)  # its executor fetches the base and the pins itself
        return
    files = files if files is not None else base_files(job.cell, job.cancel)
    job.builder = builder_for(job, files)
    if job.builder == offline.BUILDER:
        return
    if installer.installs_locally(job.cell):
        # The build user's throw-away key and the installer's kickstart, as vSphere's (installer.py).
        installer.write_install_files(job.directory, job.cell.os_info, job.cell.cloud, [])
    else:
        _place_base(job, files)
    job.packer_args = ["-var", f"qemu_accelerator={accelerator_for(job, files)}"]


def _place_base(job: Job, files: dict[str, Path]) -> None:
    """The base files linked into base/, a throw-away key and the NoCloud seed that lets the build user in."""
    base = job.directory / "base"
    base.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        _link(path, base / name)
    for stale in ("id_ed25519", "id_ed25519.pub"):
        (base / stale).unlink(missing_ok=True)
    key = qemu.make_ssh_key(base)
    # The build user exists only while Packer runs: the template's shutdown removes it.
    qemu.write_seed_dir(base / "seed", str(registry.get(job.cell.cloud).ssh_user), [key.public], instance_id=f"build-{job.cell.id}",
                        extra_config=immutable.seed_config(job.cell))


def qcow2_of(artifact: Artifact, job: Job) -> Path:
    for name in artifact.files:
        path = Path(name)
        path = path if path.is_absolute() else job.directory / path
        if path.suffix == ".qcow2" and path.exists():
            return path
    raise UserError(f"{job.cell.id}: the build wrote no qcow2 (see {job.log_path})")


def validate_hook(job: Job) -> qemu.ValidateHook:
    """The validate role against the booted VM, with the cell's variables, as the build ran it.
    A booted image has its own machine-id and host keys, and kubelet restarts until kubeadm joins."""
    cell_vars = json.loads((job.directory / "ansible-vars.json").read_text())
    return qemu.role_check({**cell_vars, **BOOTED_VARS})


def boot_test(job: Job, artifact: Artifact, image: Path | None = None, disk_format: str = "qcow2") -> None:
    """Boot the build's qcow2 (or ``image``, another form of the same disk) and check it."""
    image = image or qcow2_of(artifact, job)
    if job.cell.os_info.family == "flatcar":
        # Flatcar reads its Ignition config from QEMU's fw_cfg, not the NoCloud seed the boot test
        # gives: its boot is not tested here yet, and the log says so.
        with job.log_path.open("a") as log:
            log.write(f"==> boot test: skipped for {job.cell.os} (Ignition through fw_cfg is not wired into "
                      "the boot test yet)\n")
        return
    node = not offline.os_alone(job.cell)
    # The OS alone (no roles): it boots, logs in and finishes cloud-init; no Kubernetes, no provenance file.
    expected = ({"build_key": job.cell.build_key, "kubernetes_version": job.cell.kubernetes_version} if node
                else {"active": [], "enabled": []})
    if offline.firmware_of(job.cell) == "efi":
        expected["firmware"] = "efi"  # booted under OVMF, and it must say UEFI booted it
    workdir = job.directory / "boot-test"
    shutil.rmtree(workdir, ignore_errors=True)
    result = qemu.boot_test(image, expected, user=job.cell.os_info.ssh_user, workdir=workdir,
                            validate=validate_hook(job) if node else None, cancel=job.cancel, disk_format=disk_format)
    (job.directory / "boot-test.json").write_text(json.dumps(
        {"ok": result.ok, "seconds": result.seconds,
         "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks]}, indent=2))
    with job.log_path.open("a") as log:
        log.write(result.summary() + "\n")
    result.raise_for_failure()
