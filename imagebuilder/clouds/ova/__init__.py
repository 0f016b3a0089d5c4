"""ova: the local build as a vSphere OVA (image-builder's `node-ova-local-*` targets).

Its cells build exactly as qemu's; after the boot test of the qcow2, the disk becomes a
streamOptimized VMDK with an OVF descriptor and a manifest, tarred as `<name>.ova`, with a
`.sha256sum` beside it, catalogued locally under its own store ("ova"). The efi variant's OVA is the
qemu efi build's disk, its descriptor saying `firmware` `efi` (vmw:Config) so that vSphere boots it
with UEFI. Importing into vSphere (a content library) is described in the README.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from imagebuilder.clouds.ova.settings import OvaSettings
from imagebuilder.clouds.qemu import LocalOutput

if TYPE_CHECKING:
    from imagebuilder.artifact import Artifact
    from imagebuilder.build import Job
    from imagebuilder.clouds.ova.ovf import OvaFiles


class Ova(LocalOutput):
    name = "ova"
    settings = OvaSettings
    order = 2
    image_builder_names = ("node-ova-local",)
    store_path = "imagebuilder.clouds.ova.store:OvaCatalogue"
    image_gib = 2.0  # the streamOptimized VMDK is compressed

    def finish(self, job: Job, artifact: Artifact) -> Artifact:
        from imagebuilder import local_target

        super().finish(job, artifact)  # the qcow2's boot test: the OVA holds the same disk
        files = ova_of(job, artifact, local_target.qcow2_of(artifact, job))
        beside = [name for name in artifact.files if not name.endswith(".qcow2")]  # the SBOM, the provenance
        return replace(artifact, files=[str(files.ova), str(files.sums), *beside])


def ova_of(job: Job, artifact: Artifact, qcow2: Path) -> OvaFiles:
    from imagebuilder import __version__, offline
    from imagebuilder.clouds.ova.ovf import Hardware, Product, build_ova

    cell, settings, metadata = job.cell, job.cell.settings, artifact.metadata
    hardware = Hardware(version=settings["hardware_version"], cpus=settings["ova_cpus"],
                        memory_mb=settings["ova_memory_mb"], network=settings["network"],
                        firmware=offline.firmware_of(cell))
    product = Product(name=qcow2.stem, kubernetes_semver=metadata.kubernetes_version,
                      distro_name=cell.os.split("-")[0], distro_version=metadata.os_version, distro_arch=cell.arch,
                      build_key=cell.build_key, build_timestamp=metadata.build_timestamp, versions=dict(artifact.versions),
                      imagebuilder_version=__version__)
    return build_ova(qcow2, qcow2.stem, hardware, product)


CLOUD = Ova()
