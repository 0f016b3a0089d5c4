"""ova: the local build as a vSphere OVA (image-builder's `node-ova-local-*` targets).

Its cells build exactly as qemu's; after the boot test of the qcow2, the disk becomes a
streamOptimized VMDK with an OVF descriptor and a manifest, tarred as `<name>.ova`, with a
`.sha256sum` beside it, catalogued locally under its own store ("ova"). The efi variant's OVA is the
qemu efi build's disk, its descriptor saying `firmware` `efi` (vmw:Config) so that vSphere boots it
with UEFI. Importing into vSphere (a content library) is described in the README.

image-builder's two other local OVA flavours are variants (settings.py VARIANTS), named before the OS
in their targets as its Makefile does: `base` (build-node-ova-local-base-<os>) is the OS alone, the
local build's base disk made bootable with no roles and no Kubernetes; `vmx`
(build-node-ova-local-vmx-<os>) is the node built on that base OVA, whose disk Packer boots instead
of the vendor's image (image-builder's vmware-vmx builder on the base VM's .vmx), so a node is rebuilt
without reinstalling the OS. A vmx cell's base_image names the base cell and its build key
(planner.built_on_reference), so its own key says which OVA it came from; the build takes that OVA
from the catalogue, and its descriptor names it (IMAGEBUILDER_BASE_BUILD_KEY). `base-efi` and
`vmx-efi` are the same with UEFI firmware. Flatcar's are baked (imagebuilder/flatcar.py): its base is
the vendor's disk without the sysext, its vmx the sysext written onto the base OVA's disk.
"""

from __future__ import annotations

import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.ova.settings import BASE, VMX, OvaSettings
from imagebuilder.clouds.qemu import LocalOutput
from imagebuilder.errors import UserError

if TYPE_CHECKING:
    from imagebuilder.artifact import Artifact
    from imagebuilder.build import Job
    from imagebuilder.clouds.ova.ovf import OvaFiles
    from imagebuilder.planner import Cell



class Ova(LocalOutput):
    name = "ova"
    guest_platform = "vsphere"
    settings = OvaSettings
    order = 2
    image_builder_names = ("node-ova-local",)
    store_path = "imagebuilder.clouds.ova.store:OvaCatalogue"
    image_gib = 2.0  # the streamOptimized VMDK is compressed

    def image_builder_target(self, os_id: str, arch: str, variant: str | None) -> str:
        """`build-node-ova-local[-base|-vmx]-<os>[-<arch>][-efi]`: a flavour before the OS, as image-builder names it."""
        flavour = flavour_of(variant)
        if flavour is None:
            return super().image_builder_target(os_id, arch, variant)
        rest = (variant or "").removeprefix(flavour).lstrip("-")
        return "-".join(["build", self.image_builder_names[0], flavour, os_id,
                         *([arch] if arch != self.default_arch else []), *([rest] if rest else [])])

    def image_name_prefix(self, cell: Cell) -> str:
        """A base image holds no Kubernetes: `<os>-base[-efi]-<timestamp>`."""
        if flavour_of(cell.variant) == BASE:
            return f"{cell.os}{'' if cell.arch == self.default_arch else '-' + cell.arch}-{cell.variant}-"
        return super().image_name_prefix(cell)

    def template_context(self, cell: Cell) -> dict[str, Any]:
        """The base flavour provisions nothing (the OS alone); the vmx flavour's disk, a built OVA's,
        boots with its own bootloader."""
        context = super().template_context(cell)
        flavour = flavour_of(cell.variant)
        if self.os_alone(cell):
            context["provision_node"] = False
        if flavour == VMX:
            context.update(direct_kernel_boot=False, provision_first=[])
        return context

    def os_alone(self, cell: Cell) -> bool:
        return flavour_of(cell.variant) == BASE

    def variant_unbuilt(self, cell: Cell, packer_version: tuple[int, int, int] | None = None) -> str | None:
        """The efi variants as qemu's; a vmx-efi cell is booted by the Packer template, which boots BIOS:
        only a base whose disk boots both (the vendor's UEFI-capable image) can be built on."""
        reason = super().variant_unbuilt(cell, packer_version)
        flavour = flavour_of(cell.variant)
        if reason or flavour is None:
            return reason
        if flavour != VMX:
            return None
        from imagebuilder import offline

        local = cell.os_info.local_base
        if offline.firmware_of(cell) == "efi" and not getattr(local, "uefi", False):
            return (f"{cell.id}: the vmx flavour boots its base OVA in the Packer template, which boots BIOS, and "
                    f"{cell.os}'s efi disk boots UEFI only | fix: exclude {{cloud: {cell.cloud}, os: {cell.os}, "
                    f"variant: {cell.variant}}}")
        return None

    def prepare(self, job: Job) -> None:
        """A vmx cell's base disk is the base OVA's, from the catalogue (Flatcar's bake writes onto it
        too); the others' as qemu's."""
        from imagebuilder import local_target, offline

        if offline.built_on_image(job.cell):
            local_target.prepare(job, {"disk.img": built_on_disk(job)})
        else:
            local_target.prepare(job)

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
    node = flavour_of(cell.variant) != BASE
    product = Product(name=qcow2.stem, kubernetes_semver=metadata.kubernetes_version if node else None,
                      distro_name=cell.os.split("-")[0], distro_version=metadata.os_version, distro_arch=cell.arch,
                      build_key=cell.build_key, build_timestamp=metadata.build_timestamp,
                      versions=dict(artifact.versions) if node else {}, imagebuilder_version=__version__,
                      base_build_key=cell.base_image.get("build_key", "") if flavour_of(cell.variant) == VMX else "")
    return build_ova(qcow2, qcow2.stem, hardware, product)


def flavour_of(variant: str | None) -> str | None:
    """"base" or "vmx" for a cell of those flavours (their efi forms too), else None."""
    return OvaSettings.VARIANTS[variant].build.get("flavour") if variant in OvaSettings.VARIANTS else None


def built_on_disk(job: Job) -> Path:
    """The disk of the base OVA a vmx cell is built on (its base_image's build key), from the OVA
    catalogue: its .sha256sum checked, the VMDK taken out and made a qcow2 in the cell's base/."""
    from imagebuilder import offline
    from imagebuilder.clouds.disks import run_tool
    from imagebuilder.clouds.ova.store import OvaCatalogue

    cell, base = job.cell, job.cell.base_image
    records = OvaCatalogue().find_by_build_key(base["build_key"])
    ova = next((Path(record.extra["path"]) for record in records if record.state == "available"), None)
    if ova is None:
        raise UserError(f"{cell.id}: the {base['variant']} OVA it is built on ({base['cell']}, build key "
                        f"{base['build_key'][:16]}) is not in the catalogue | fix: build it first: imagebuilder build "
                        f"--only {base['cell']} (with the same matrix), then this cell")
    sums = ova.with_name(ova.name + ".sha256sum")
    checked = subprocess.run(["sha256sum", "--check", "--strict", "--quiet", sums.name], cwd=ova.parent,
                             capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        raise UserError(f"{cell.id}: {ova} does not match {sums.name} ({checked.stdout.strip() or checked.stderr.strip()}) "
                        f"| fix: build {base['cell']} again")
    directory = job.directory / "base"
    directory.mkdir(parents=True, exist_ok=True)
    vmdk = directory / "built-on.vmdk"
    with tarfile.open(ova) as archive:
        member = next((m for m in archive.getmembers() if m.name.endswith(".vmdk") and m.isfile()), None)
        stream = archive.extractfile(member) if member is not None else None
        if stream is None:
            raise UserError(f"{cell.id}: {ova} holds no VMDK | fix: build {base['cell']} again")
        with vmdk.open("wb") as out:
            while chunk := stream.read(4 * 1024**2):
                out.write(chunk)
    disk = offline.built_on_path(job)
    try:
        run_tool(["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", str(vmdk), str(disk)], vmdk)
    finally:
        vmdk.unlink(missing_ok=True)
    return disk


CLOUD = Ova()
