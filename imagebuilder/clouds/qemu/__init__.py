"""qemu: the local image, a qcow2 built on this host and boot-tested in QEMU, catalogued locally.

The local build's machinery (the base disk, the offline builder, QEMU) lives in
imagebuilder/local_target.py, offline.py, qemu.py and distributions/, shared with the other
local outputs; this folder is what the matrix's `clouds.qemu` means.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from imagebuilder import installer
from imagebuilder.clouds.qemu.settings import QemuSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext
from imagebuilder.osinfo import OPERATING_SYSTEMS

if TYPE_CHECKING:
    from imagebuilder.artifact import Artifact
    from imagebuilder.baseimages import Resolver
    from imagebuilder.build import Job
    from imagebuilder.planner import Cell

# image-builder's suffix of a qemu build that starts from the vendor's cloud image (QEMU_BUILD_NAMES).
CLOUDIMG = "cloudimg"
# The Packer build logs in as this user, made by the build's NoCloud seed and removed at shutdown.
BUILD_USER = "packer"
# A locally built base disk has no bootloader yet: the build installs it.
INSTALL_BOOTLOADER = ("sudo grub-install /dev/vda", "sudo update-grub")


class Qemu(Cloud):
    name = "qemu"
    settings = QemuSettings
    order = 0
    builder = "qemu"
    image_builder_names = ("qemu",)
    plugin = Plugin("qemu", "github.com/hashicorp/qemu", ">= 1.1.0")
    store_path = "imagebuilder.clouds.local:LocalCatalogue"
    store_name = "local"
    ssh_user = BUILD_USER
    estimate_s = 300.0
    image_gib = 2.0  # a compressed qcow2
    imports_stock_image = True  # the vendor's cloud image is downloaded and kept
    # The local build runs the image's own programs on this host (the offline builder's chroot, the
    # Packer VM and the boot test under KVM or TCG of the host's arch): amd64 hosts, amd64 images.
    arches = ("amd64",)
    cloudimg_alias: ClassVar[bool] = True  # image-builder has -cloudimg names for qemu and kubevirt-qemu
    arch_reason = "the local build runs the image on this amd64 host: its offline chroot and boot test"

    def image_builder_targets(self, os_id: str, arch: str, variant: str | None) -> tuple[str, ...]:
        """image-builder's qemu builds install from the vendor's ISO; its `-cloudimg` ones start from
        the vendor's cloud image, as every qemu cell here whose base is one does. So such a cell
        answers to both names: the plain one (the same OS, Kubernetes and qcow2) and `-cloudimg`
        (the same way of building). Debian's base is built here, not a vendor cloud image."""
        own = super().image_builder_targets(os_id, arch, variant)
        base = OPERATING_SYSTEMS[os_id].local_base
        if not self.cloudimg_alias or variant is not None or base is None or base.kind != "cloud-image":
            return own
        return (*own, f"{own[0]}-{CLOUDIMG}")

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        resolved = context.resolved
        if installer.installs_locally(cell):
            return {**self.machine_variables(cell), **iso_variables(cell, context)}
        return {
            **self.machine_variables(cell),
            # base/disk.img is the vendor image the plan resolved; the Debian base is built here,
            # from the InRelease files the plan resolved (distributions/debian.py BaseSpec.releases).
            # A base the user supplies (supplied.py) has its sha256 in the reference itself.
            "qemu_base_checksum": (f"sha256:{resolved['sha256']}" if "sha256" in resolved else
                                   f"sha256:{cell.base_image['sha256']}" if "sha256" in cell.base_image else "none"),
        }

    def machine_variables(self, cell: Cell) -> dict[str, Any]:
        """The build VM's, whatever it boots."""
        settings = cell.settings
        return {
            "qemu_accelerator": settings["accelerator"] if settings["accelerator"] != "auto" else "tcg",
            "qemu_disk_size_mb": settings["disk_size_mb"],
            "qemu_memory_mb": settings["memory_mb"],
            "qemu_cpus": settings["cpus"],
        }

    def template_context(self, cell: Cell) -> dict[str, Any]:
        if installer.installs_locally(cell):
            # The installed system's first boot: the build user the install made, removed (with the
            # install's own seed) by the shutdown command.
            return {"direct_kernel_boot": False, "provision_first": [], "install_from_iso": True,
                    "http_directory": installer.HTTP_DIRECTORY,
                    "shutdown_command": installer.remove_build_user("shutdown -P now")}
        if cell.os_info.family == "flatcar":
            # Baked by the flatcar builder (imagebuilder/flatcar.py), never by this template: it says so.
            return {"direct_kernel_boot": False, "install_from_iso": False,
                    "build_template": "_common/build.pkr.hcl.j2", "provision_node": False,
                    "wait_for_cloud_init": False,
                    "provision_first": ["echo 'Flatcar is baked by the flatcar builder, not this template' >&2; exit 1"]}
        direct_kernel_boot = cell.base_image.get("source") == "local"
        return {"direct_kernel_boot": direct_kernel_boot, "install_from_iso": False,
                "provision_first": list(INSTALL_BOOTLOADER) if direct_kernel_boot else []}

    def resolve_base(self, resolver: Resolver, cell: Cell) -> dict[str, Any]:
        from imagebuilder.clouds.qemu import bases

        return bases.resolve(resolver, cell)

    def variant_unbuilt(self, cell: Cell, packer_version: tuple[int, int, int] | None = None) -> str | None:
        """The efi variant is built (by the offline build) for an OS with a base tree; the immutable one by
        the Packer build of a vendor cloud image."""
        from imagebuilder import immutable, local_target

        return local_target.efi_unbuilt(cell) or immutable.unbuilt(cell)

    def prepare(self, job: Job) -> None:
        from imagebuilder import local_target

        local_target.prepare(job)

    def finish(self, job: Job, artifact: Artifact) -> None:
        if job.cell.settings.get("boot_test", True):
            from imagebuilder import local_target

            local_target.boot_test(job, artifact)


def iso_variables(cell: Cell, context: RenderContext) -> dict[str, Any]:
    """The ISO, as the OS table pins it, and the installer's boot command (imagebuilder/installer.py, as
    vSphere's); Packer logs in as the build user the install made."""
    iso_url, iso_checksum = installer.iso_of(cell, context.resolved)
    return {"qemu_iso_url": iso_url, "qemu_iso_checksum": iso_checksum,
            "qemu_boot_command": list(installer.installer_for(cell.os_info, Qemu.name).boot_command),
            "ssh_username": installer.BUILD_USER}


class LocalOutput(Qemu):
    """A local output (raw, ova): cells built exactly as qemu's (its base images, template,
    builders and boot test), whose qcow2 the output's `finish` turns into its own files."""

    store_name = None  # its own store in the local catalogue: its images are not the qcow2's
    cloudimg_alias = False  # image-builder's raw and OVA targets have no -cloudimg names
    template = "qemu.pkr.hcl.j2"  # type: ignore[assignment]

    @property
    def template_path(self) -> Path:
        return Path(__file__).parent / self.template

    def base_image(self, reference: dict[str, Any] | None, os_info: Any, arch: str) -> dict[str, Any] | None:
        return os_info.image(Qemu.name, arch)


CLOUD = Qemu()
