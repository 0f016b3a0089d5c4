"""Proxmox VE: VM templates built with Packer's proxmox builder from the OS's installer ISO
(image-builder's `proxmox-*` targets).

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
        iso_url, iso_checksum = installer.iso_of(cell)
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
        }

    def template_context(self, cell: Cell) -> dict[str, Any]:
        """The builder stops the VM itself (no shutdown command): the build user goes in a last step."""
        return {"key_file": installer.KEY_FILE, "http_directory": installer.HTTP_DIRECTORY,
                "provision_last": [installer.remove_build_user()]}

    def prepare(self, job: Job) -> None:
        """A throw-away key for the build user, and the installer's files with it."""
        installer.write_install_files(job.directory, job.cell.os_info, self.name, GUEST_PACKAGES)


CLOUD = Proxmox()
