"""kubevirt: the local build as a KubeVirt containerDisk in a registry (image-builder's
`build-kubevirt-qemu-*` targets).

Its cells build exactly as qemu's (the same template, base disk, builders and boot test); after
the qcow2's boot test the disk becomes a scratch OCI image holding it as /disk/<name>.qcow2, owned
107:107, with the image metadata as labels and annotations (containerdisk.py, made with buildah),
which publishing pushes to `clouds.kubevirt.registry` (store.py). The image id is
`<repository>@sha256:<manifest digest>`, what a VirtualMachine's `containerDisk.image` names.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.kubevirt.settings import KubevirtSettings
from imagebuilder.clouds.qemu import LocalOutput

if TYPE_CHECKING:
    from imagebuilder.artifact import Artifact
    from imagebuilder.build import Job
    from imagebuilder.metadata import ImageMetadata


class Kubevirt(LocalOutput):
    name = "kubevirt"
    guest_platform = "qemu"
    settings = KubevirtSettings
    order = 3
    image_builder_names = ("kubevirt-qemu",)
    cloudimg_alias = True  # kubevirt-qemu-<os>-cloudimg: image-builder's kubevirt- + QEMU_BUILD_NAMES
    store_path = "imagebuilder.clouds.kubevirt.store:RegistryStore"
    sdk_extra = "kubevirt"
    image_gib = 2.0  # the qcow2 in an uncompressed layer: it is compressed already

    def finish(self, job: Job, artifact: Artifact) -> Artifact:
        from imagebuilder import local_target
        from imagebuilder.clouds.kubevirt import containerdisk

        super().finish(job, artifact)  # the qcow2's boot test: the containerDisk holds the same disk
        qcow2 = local_target.qcow2_of(artifact, job)
        disk = containerdisk.build(qcow2, artifact.metadata, workdir=job.directory)
        beside = [name for name in artifact.files if not name.endswith(".qcow2")]  # the SBOM, the provenance
        return replace(artifact, files=[str(disk.archive), *beside])


def containerdisk_of(qcow2: Path, metadata: ImageMetadata, settings: KubevirtSettings | dict[str, Any],
                     workdir: Path | None = None) -> str:
    """The qcow2 as a containerDisk, pushed to `settings.registry`: its image id,
    `<repository>@sha256:...`. What a kubevirt cell's finish and publish do, for a qcow2 built
    elsewhere (the end-to-end test's); `images list/resolve/prune --cloud kubevirt` then see it.
    Idempotent: a second call for the same build key finds the first push."""
    from imagebuilder.artifact import Artifact
    from imagebuilder.clouds.kubevirt import containerdisk
    from imagebuilder.clouds.kubevirt.store import RegistryStore
    from imagebuilder.clouds.registry import DEFAULT_REGION

    model = settings if isinstance(settings, KubevirtSettings) else KubevirtSettings(**settings)
    disk = containerdisk.build(qcow2, metadata, workdir=workdir)
    artifact = Artifact(cell_id=metadata.cell, cloud=Kubevirt.name, build_key=metadata.build_key,
                        image_name=qcow2.stem, metadata=metadata, ids={}, files=[str(disk.archive)],
                        versions={})
    return RegistryStore(model).publish(artifact)[DEFAULT_REGION]


CLOUD = Kubevirt()
