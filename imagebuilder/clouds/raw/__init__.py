"""raw: the local build as a raw disk for bare metal (Metal3, MAAS), compressed, with sha256 files.

Its cells build exactly as qemu's (the same template, base disk, offline builder and boot test:
this cloud is the qemu one with another output); after the build the qcow2 becomes
`<name>.raw`, `<name>.raw.gz` (or `.xz`) and a `.sha256sum` beside each, the raw disk is
boot-tested, and the files go to the local catalogue under their own store ("raw").
image-builder's `build-raw-*` targets make the same kind of image.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from imagebuilder.clouds.qemu import LocalOutput
from imagebuilder.clouds.raw.settings import RawSettings

if TYPE_CHECKING:
    from imagebuilder.artifact import Artifact
    from imagebuilder.build import Job


class Raw(LocalOutput):
    name = "raw"
    guest_platform = "qemu"
    settings = RawSettings
    order = 1
    image_builder_names = ("raw",)
    store_path = "imagebuilder.clouds.raw.store:RawCatalogue"
    image_gib = 3.0  # the compressed raw disk beside the sparse raw one

    def finish(self, job: Job, artifact: Artifact) -> Artifact:
        from imagebuilder import local_target
        from imagebuilder.clouds.raw.disk import raw_outputs

        qcow2 = local_target.qcow2_of(artifact, job)
        files = raw_outputs(qcow2, job.cell.settings["compression"], job.cell.settings["compression_level"])
        if job.cell.settings.get("boot_test", True):
            local_target.boot_test(job, artifact, image=files.raw, disk_format="raw")
        beside = [name for name in artifact.files if Path(name).name != qcow2.name]  # the SBOM, the provenance
        return replace(artifact, files=[*(str(path) for path in files.all), *beside])


CLOUD = Raw()
