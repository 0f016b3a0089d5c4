"""vSphere: VM templates built in vCenter with Packer's vsphere-iso and vsphere-clone builders
(image-builder's `node-ova-vsphere-*`, `node-ova-vsphere-clone-*` and `node-ova-vsphere-base-*`).

One cloud, three flavours as image-builder has them: the default cells install the OS from its ISO
(vsphere-iso), the `clone` variant starts from a VM template (vsphere-clone), the `base` variant is the
OS alone (vsphere-iso, no roles), the template the clone variant starts from. Each boots UEFI as one
more variant, `efi`, `clone-efi`, `base-efi` (vSphere's `firmware = "efi"`; clone-efi clones the
base-efi template). The image-builder target of a variant cell names the flavour before the OS and
the firmware after it (`build-node-ova-vsphere-clone-ubuntu-2204-efi`).

imagebuilder does not manage these images yet (no vCenter simulator here to test a store against):
the template stays in the folder of the settings, or in the content library they name, and
`images`/`prune` skip this cloud (registry.Cloud.store_path).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagebuilder import installer
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext
from imagebuilder.clouds.vsphere.settings import VsphereSettings, flavour_of
from imagebuilder.osinfo import DEFAULT_ARCH

if TYPE_CHECKING:
    from imagebuilder.baseimages import Resolver
    from imagebuilder.build import Job
    from imagebuilder.planner import Cell

# vSphere's guest OS identifiers of the distributions it installs.
GUEST_OS_TYPES = {"ubuntu": "ubuntu64Guest", "debian": "debian12_64Guest", "rocky": "rockylinux_64Guest",
                  "almalinux": "rhel9_64Guest", "rhel": "rhel9_64Guest", "photon": "vmwarePhoton64Guest",
                  "flatcar": "other5xLinux64Guest"}
# In the installed system: VMware Tools report the VM's address to vCenter, which Packer asks for.
GUEST_PACKAGES = ["open-vm-tools"]


class Vsphere(Cloud):
    name = "vsphere"
    settings = VsphereSettings
    order = 21
    builder = "vsphere-iso"
    image_builder_names = ("node-ova-vsphere",)
    plugin = Plugin("vsphere", "github.com/hashicorp/vsphere", ">= 1.2.0")
    store_path = None
    image_location = "vCenter: the folder of clouds.vsphere, or its content library"
    ssh_user = installer.BUILD_USER
    estimate_s = 1800.0
    validate_env = {"VSPHERE_USERNAME": "validate-only", "VSPHERE_PASSWORD": "validate-only"}

    def image_builder_target(self, os_id: str, arch: str, variant: str | None) -> str:
        """`build-node-ova-vsphere[-clone|-base]-<os>[-<arch>][-efi]`, as image-builder names them: the
        flavour before the OS, the rest of the variant's name after it."""
        flavour = flavour_of(variant)
        if flavour:
            rest = (variant or "").removeprefix(flavour).lstrip("-")
            return "-".join(["build", self.image_builder_names[0], flavour, os_id,
                             *([arch] if arch != DEFAULT_ARCH else []), *([rest] if rest else [])])
        return super().image_builder_target(os_id, arch, variant)

    def image_name_prefix(self, cell: Cell) -> str:
        """The base variants hold no Kubernetes: `<os>-base-<timestamp>`, `<os>-base-efi-<timestamp>`."""
        return f"{cell.os}-{cell.variant}-" if flavour_of(cell.variant) == "base" else super().image_name_prefix(cell)

    def variant_unbuilt(self, cell: Cell, packer_version: tuple[int, int, int] | None = None) -> str | None:
        """The template renders every variant (firmware, builder); an efi cell needs an ISO boot command
        that works under UEFI (its clone-efi cell clones the base-efi template installed with it)."""
        if self.firmware(cell) != "efi":
            return None
        return installer.uefi_unbuilt(cell.id, cell.os_info, self.name, cell.variant or "")

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        variables: dict[str, Any] = {
            "vsphere_vcenter_server": settings["vcenter_server"],
            "vsphere_insecure_connection": settings["insecure_connection"],
            "vsphere_datacenter": settings["datacenter"],
            "vsphere_cluster": settings["cluster"] or "",
            "vsphere_host": settings["host"] or "",
            "vsphere_resource_pool": settings["resource_pool"] or "",
            "vsphere_datastore": settings["datastore"],
            "vsphere_folder": settings["folder"],
            "vsphere_network": settings["network"],
            "vsphere_cpus": settings["cpus"],
            "vsphere_memory_mb": settings["memory_mb"],
            "vsphere_disk_mib": settings["disk_gib"] * 1024,
            "vsphere_content_library": settings["content_library"] or "",
            "vsphere_content_library_ovf": settings["content_library_ovf"],
        }
        if flavour_of(cell.variant) == "clone":
            base = "-".join(["base", *(["efi"] if self.firmware(cell) == "efi" else [])])
            variables["vsphere_clone_from"] = settings["clone_from"].get(cell.os, f"{cell.os}-{base}")
            variables["vsphere_linked_clone"] = settings["linked_clone"]
        else:
            variables["vsphere_iso_url"], variables["vsphere_iso_checksum"] = installer.iso_of(cell, context.resolved)
            variables["vsphere_guest_os_type"] = GUEST_OS_TYPES.get(cell.os_info.distro, "otherLinux64Guest")
            variables["vsphere_boot_command"] = list(installer.installer_for(cell.os_info, self.name).boot_command)
        return variables

    def resolve_base(self, resolver: Resolver, cell: Cell) -> dict[str, Any]:
        """Flatcar's ISO: the release `current/` names and its sha512 (imagebuilder/flatcar.py)."""
        if cell.os_info.family != "flatcar":
            return {}
        from imagebuilder import flatcar

        return flatcar.resolve_base(resolver, cell, self.name)

    def template_context(self, cell: Cell) -> dict[str, Any]:
        """The builder of the cell's flavour and its firmware (efi: UEFI; None: vSphere's default, BIOS);
        the base template keeps its build user (clones log in as it)."""
        flavour = flavour_of(cell.variant)
        base = flavour == "base"
        context = {"builder": "vsphere-clone" if flavour == "clone" else "vsphere-iso", "provision_node": not base,
                   "firmware": "efi" if self.firmware(cell) == "efi" else None,
                   "key_file": installer.KEY_FILE, "http_directory": installer.HTTP_DIRECTORY,
                   "shutdown_command": "sudo shutdown -P now" if base else installer.remove_build_user("shutdown -P now")}
        if cell.os_info.family != "flatcar":
            return context
        from imagebuilder import flatcar  # installed from its ISO (installer.flatcar_installer), then baked

        if base:  # Flatcar alone, its build user kept for the clones
            return {**context, "build_template": "_common/build.pkr.hcl.j2", "wait_for_cloud_init": False,
                    "provision_first": [flatcar.WAIT_FOR_BOOT]}
        name = flatcar.sysext_file_name(cell.kubernetes_version, cell.arch)
        return {**context, **flatcar.packer_context(cell, flatcar.booted_commands(name, cell.kubernetes_version),
                                                    flatcar.seal_commands())}

    def prepare(self, job: Job) -> None:
        """The build user's key, and (from the ISO) the installer's files with it: a throw-away key for
        the node images, `template_ssh_key` for the base template (its build user stays, for clones)
        and for the clones, which log in with it."""
        flavour = flavour_of(job.cell.variant)
        key = job.cell.settings["template_ssh_key"]
        key_path = Path(key) if flavour and key else None
        if flavour == "clone":
            installer.place_key(job.directory, key_path)
        else:
            installer.write_install_files(job.directory, job.cell.os_info, self.name, GUEST_PACKAGES, key_path)


CLOUD = Vsphere()
