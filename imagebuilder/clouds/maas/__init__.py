"""maas: the local build as a MAAS custom image, a root tarball (image-builder's `build-maas-*` targets).

Its cells build exactly as qemu's (the same template, base disk, builders and boot test; the efi
variant is qemu's efi build); after the qcow2's boot test the disk's file systems, as its
/etc/fstab mounts them (the root, /boot, /boot/efi), become `<name>.tar.gz`, the root tarball MAAS
deploys (`maas $PROFILE boot-resources create name=custom/<name> architecture=amd64/generic
filetype=tgz base_image=ubuntu/<codename> content@=<name>.tar.gz`), with a `.sha256sum` beside it,
catalogued locally under its own store ("maas"). Making it loop-mounts the disk read-only in a
private mount namespace (tarball.py), so it runs as root, as the offline build does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from imagebuilder.clouds.maas.settings import MaasSettings
from imagebuilder.clouds.qemu import LocalOutput

if TYPE_CHECKING:
    from imagebuilder.artifact import Artifact
    from imagebuilder.build import Job


class Maas(LocalOutput):
    name = "maas"
    settings = MaasSettings
    order = 4
    image_builder_names = ("maas",)
    store_path = "imagebuilder.clouds.maas.store:MaasCatalogue"
    image_gib = 1.0  # the compressed root tarball

    def finish(self, job: Job, artifact: Artifact) -> Artifact:
        from imagebuilder import local_target

        super().finish(job, artifact)  # the qcow2's boot test: the tarball holds the same file systems
        files = maas_tarball_of(local_target.qcow2_of(artifact, job))
        beside = [name for name in artifact.files if not name.endswith(".qcow2")]  # the SBOM, the provenance
        return replace(artifact, files=[*(str(path) for path in files), *beside])


def maas_tarball_of(disk: Path) -> tuple[Path, Path]:
    """`<stem>.tar.gz` and its `.sha256sum` beside the disk (a qcow2 or raw), through a sparse raw copy."""
    import hashlib

    from imagebuilder.clouds.disks import disk_format, run_tool
    from imagebuilder.clouds.maas.tarball import SUFFIX, root_tarball
    from imagebuilder.clouds.raw.disk import write_sums

    target = disk.with_name(disk.stem + SUFFIX)
    raw = disk.with_name(f".{disk.stem}.maas.raw")
    try:
        run_tool(["qemu-img", "convert", "-f", disk_format(disk), "-O", "raw", str(disk), str(raw)], disk)
        root_tarball(raw, target)
    finally:
        raw.unlink(missing_ok=True)
    digest = hashlib.sha256()
    with target.open("rb") as handle:
        while chunk := handle.read(4 * 1024**2):
            digest.update(chunk)
    return target, write_sums(target, digest.hexdigest())


CLOUD = Maas()
