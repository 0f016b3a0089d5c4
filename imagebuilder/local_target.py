"""The local qemu target around `packer build`: the base disk before, the boot test after.

Before Packer: the cached base disk (and, for a base without a bootloader, its kernel and
initrd for a direct kernel boot), a throw-away build key and a NoCloud seed that gives the
OS's default user that key, all linked into the cell's `base/` directory.
After Packer: the qcow2 boots on its own in QEMU, with a fresh throw-away key, and must
pass the checks; a failure fails the cell, so the image is never published.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from imagebuilder import qemu, render
from imagebuilder.artifact import Artifact
from imagebuilder.build import Job
from imagebuilder.config import ANSIBLE_DIR
from imagebuilder.errors import UserError

VALIDATE_PLAYBOOK = "validate.yml"


def _link(source: Path, dest: Path) -> None:
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.symlink_to(source.resolve())


def base_files(os_id: str) -> dict[str, Path]:
    """disk.img (and vmlinuz, initrd.img when the first boot is a direct kernel boot)."""
    if os_id == "debian-12":
        from imagebuilder.distributions import debian

        disk = debian.base_disk()
        return {"disk.img": disk.disk, "vmlinuz": disk.kernel, "initrd.img": disk.initrd}
    if os_id.startswith("ubuntu-"):
        from imagebuilder.distributions import ubuntu

        return {"disk.img": ubuntu.base_image(os_id).disk}  # the vendor image boots with its own GRUB
    raise UserError(f"{os_id}: the local qemu target has no base image for this OS yet "
                    "(exclude it: exclude: [{os: " + os_id + ", cloud: qemu}])")


def accelerator_for(job: Job, files: dict[str, Path]) -> str:
    wanted = job.cell.settings.get("accelerator", "auto")
    if wanted != "auto":
        return wanted
    return qemu.accelerator(files.get("vmlinuz"), files.get("initrd.img"))


def prepare(job: Job) -> None:
    base = job.directory / "base"
    base.mkdir(parents=True, exist_ok=True)
    files = base_files(job.cell.os)
    for name, path in files.items():
        _link(path, base / name)
    for stale in ("id_ed25519", "id_ed25519.pub"):
        (base / stale).unlink(missing_ok=True)
    key = qemu.make_ssh_key(base)
    # The build user exists only while Packer runs: the template's shutdown removes it.
    qemu.write_seed_dir(base / "seed", render.QEMU_BUILD_USER, [key.public], instance_id=f"build-{job.cell.id}")
    job.packer_args = ["-var", f"qemu_accelerator={accelerator_for(job, files)}"]


def _qcow2(artifact: Artifact, job: Job) -> Path:
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
    extra = {**cell_vars, "validate_hygiene_checks": False, "validate_inactive_services": []}
    return qemu.playbook_check(ANSIBLE_DIR / VALIDATE_PLAYBOOK, extra)


def boot_test(job: Job, artifact: Artifact) -> None:
    image = _qcow2(artifact, job)
    expected = {"build_key": job.cell.build_key, "kubernetes_version": job.cell.kubernetes_version}
    workdir = job.directory / "boot-test"
    shutil.rmtree(workdir, ignore_errors=True)
    result = qemu.boot_test(image, expected, user=job.cell.os_info.ssh_user, workdir=workdir,
                            validate=validate_hook(job))
    (job.directory / "boot-test.json").write_text(json.dumps(
        {"ok": result.ok, "seconds": result.seconds,
         "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks]}, indent=2))
    with job.log_path.open("a") as log:
        log.write(result.summary() + "\n")
    result.raise_for_failure()
