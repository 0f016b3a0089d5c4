"""Proxmox VE: VM templates built with Packer's proxmox builder from the OS's installer ISO
(image-builder's `proxmox-*` targets).

The `efi` variant boots OVMF with an EFI disk (`bios = "ovmf"`, `efi_config`): the proxmox plugin's
fields, which Packer 1.6.6's built-in builder lacks, so with it `build` refuses the cell in one line
before Packer (and `validate` checks the rest of its template).

imagebuilder does not manage these images yet (no Proxmox VE API stand-in here to test a store
against): the template stays on the node of the settings, and `images`/`prune` skip this cloud
(registry.Cloud.store_path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder import installer
from imagebuilder.clouds.proxmox.settings import ProxmoxSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext

if TYPE_CHECKING:
    from imagebuilder.baseimages import Resolver
    from imagebuilder.build import Job
    from imagebuilder.planner import Cell

# In the installed system: the QEMU guest agent reports the VM's address, which Packer asks Proxmox for.
GUEST_PACKAGES = ["qemu-guest-agent"]


class Proxmox(Cloud):
    name = "proxmox"
    settings = ProxmoxSettings
    order = 22
    builder = "proxmox"
    image_builder_names = ("proxmox",)
    plugin = Plugin("proxmox", "github.com/hashicorp/proxmox", ">= 1.1.3")
    store_path = None
    image_location = "Proxmox VE: a VM template on the node of clouds.proxmox"
    ssh_user = installer.BUILD_USER
    estimate_s = 1800.0
    validate_env = {"PROXMOX_URL": "https://proxmox.invalid:8006/api2/json", "PROXMOX_USERNAME": "validate@pve",
                    "PROXMOX_PASSWORD": "validate-only"}

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        iso_url, iso_checksum = installer.iso_of(cell, context.resolved)
        return {
            # "": the builder reads PROXMOX_URL / PROXMOX_USERNAME itself.
            "proxmox_url": settings["url"] or "",
            "proxmox_username": settings["username"] or "",
            "proxmox_insecure_skip_tls_verify": settings["insecure_skip_tls_verify"],
            "proxmox_node": settings["node"],
            "proxmox_pool": settings["pool"] or "",
            "proxmox_iso_url": iso_url,
            "proxmox_iso_checksum": iso_checksum,
            "proxmox_iso_storage_pool": settings["iso_storage_pool"],
            "proxmox_storage_pool": settings["storage_pool"],
            "proxmox_storage_pool_type": settings["storage_pool_type"],
            "proxmox_disk_format": settings["disk_format"],
            "proxmox_disk_size": f"{settings['disk_gib']}G",
            "proxmox_bridge": settings["bridge"],
            "proxmox_vlan_tag": str(settings["vlan_tag"] or ""),
            "proxmox_cores": settings["cores"],
            "proxmox_sockets": settings["sockets"],
            "proxmox_memory_mb": settings["memory_mb"],
            "proxmox_cpu_type": settings["cpu_type"],
            "proxmox_boot_command": list(installer.installer_for(cell.os_info, self.name).boot_command),
            **({"proxmox_efi_storage_pool": settings["efi_storage_pool"] or settings["storage_pool"]}
               if self.firmware(cell) == "efi" else {}),
        }

    def resolve_base(self, resolver: Resolver, cell: Cell) -> dict[str, Any]:
        """Flatcar's ISO: the release `current/` names and its sha512 (imagebuilder/flatcar.py)."""
        if cell.os_info.family != "flatcar":
            return {}
        from imagebuilder import flatcar

        return flatcar.resolve_base(resolver, cell, self.name)

    def template_context(self, cell: Cell) -> dict[str, Any]:
        """The builder stops the VM itself (no shutdown command): the build user goes in a last step."""
        return {"key_file": installer.KEY_FILE, "http_directory": installer.HTTP_DIRECTORY,
                "provision_last": [installer.remove_build_user()],
                "firmware": "efi" if self.firmware(cell) == "efi" else None, **self.flatcar_context(cell)}

    def old_packer_context(self, cell: Cell) -> dict[str, Any]:
        # Packer 1.6.6's built-in proxmox builder has neither `bios` nor `efi_config` (nor `efidisk`).
        return {"firmware": None}

    def variant_unbuilt(self, cell: Cell, packer_version: tuple[int, int, int] | None = None) -> str | None:
        """The efi variant: an ISO boot command that works under UEFI, and the proxmox plugin's
        `bios`/`efi_config` (Packer >= 1.7)."""
        from imagebuilder.render import MODERN_PACKER

        if self.firmware(cell) != "efi":
            return None
        reason = installer.uefi_unbuilt(cell.id, cell.os_info, self.name, cell.variant or "")
        if reason or packer_version is None or packer_version >= MODERN_PACKER:
            return reason
        return (f"{cell.id}: the efi variant's bios ovmf and efi_config need the proxmox plugin ({self.plugin.source} "
                f"{self.plugin.version}); Packer {'.'.join(map(str, packer_version))}'s built-in proxmox has neither "
                f"| fix: Packer >= {'.'.join(map(str, MODERN_PACKER))} (render writes required_plugins), or exclude "
                f"{{cloud: proxmox, variant: efi}}")

    def flatcar_context(self, cell: Cell) -> dict[str, Any]:
        """Flatcar, installed from its ISO (installer.flatcar_installer), is baked in the booted system."""
        if cell.os_info.family != "flatcar":
            return {}
        from imagebuilder import flatcar

        name = flatcar.sysext_file_name(cell.kubernetes_version, cell.arch)
        return flatcar.packer_context(cell, flatcar.booted_commands(name, cell.kubernetes_version),
                                      [*flatcar.seal_commands(), installer.remove_build_user()])

    def prepare(self, job: Job) -> None:
        """A throw-away key for the build user, and the installer's files with it."""
        installer.write_install_files(job.directory, job.cell.os_info, self.name, GUEST_PACKAGES)


CLOUD = Proxmox()
