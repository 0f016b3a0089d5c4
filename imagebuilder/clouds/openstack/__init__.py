"""OpenStack: Glance images built with the openstack builder, shared with members."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.openstack.settings import OpenstackSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext

if TYPE_CHECKING:
    from imagebuilder.baseimages import Resolver
    from imagebuilder.planner import Cell

# Glance image properties Nova reads when it boots the image.
BOOT_PROPERTIES = {"hw_disk_bus": "scsi", "hw_scsi_model": "virtio-scsi", "hw_qemu_guest_agent": "yes"}


class Openstack(Cloud):
    name = "openstack"
    settings = OpenstackSettings
    order = 3
    builder = "openstack"
    image_builder_names = ("openstack",)
    plugin = Plugin("openstack", "github.com/hashicorp/openstack", ">= 1.1.2")
    store_path = "imagebuilder.clouds.openstack.store:OpenstackImageStore"
    sdk_extra = "openstack"
    estimate_s = 600.0
    imports_stock_image = True  # Glance holds a copy of the vendor's image

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        info = cell.os_info
        return {
            "openstack_cloud": settings["cloud"] or "",
            "openstack_flavor": settings["flavor"],
            "openstack_networks": settings["networks"],
            "openstack_floating_ip_network": settings["floating_ip_network"] or "",
            "openstack_source_image": cell.base_image["image_name"],
            **({"openstack_source_image_id": context.resolved["image_id"]} if context.resolved else {}),
            "openstack_visibility": settings["visibility"],
            "openstack_properties": {"os_distro": info.distro, "os_version": info.version, **BOOT_PROPERTIES},
        }

    def resolve_base(self, resolver: Resolver, cell: Cell) -> dict[str, Any]:
        """Glance images by name: the newest active one's id."""
        reference = {"image_name": cell.base_image["image_name"]}
        region = str(cell.settings.get("cloud") or "default")
        store = resolver.store(cell, region)

        def ask() -> dict[str, Any]:
            images = store._call(f"list images named {reference['image_name']}",
                                 lambda: list(store.conn.image.images(name=reference["image_name"], status="active")))
            if not images:
                return {}
            newest = max(images, key=lambda image: (str(image.created_at or ""), str(image.id)))
            return {"image_id": str(newest.id)}

        found = resolver.lookup(self.name, region, reference, ask)
        if not found:
            raise resolver.unresolvable(cell, f"Glance has no active image named {reference['image_name']}",
                                        "upload the base image under that name")
        return found


CLOUD = Openstack()
