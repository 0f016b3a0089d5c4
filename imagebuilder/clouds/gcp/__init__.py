"""GCP: images built with googlecompute, in an image family per (os, minor), labelled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.gcp.naming import image_family
from imagebuilder.clouds.gcp.settings import GcpSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext

if TYPE_CHECKING:
    from imagebuilder.baseimages import Resolver
    from imagebuilder.planner import Cell


class Gcp(Cloud):
    name = "gcp"
    settings = GcpSettings
    order = 2
    builder = "googlecompute"
    image_builder_names = ("gce",)
    plugin = Plugin("googlecompute", "github.com/hashicorp/googlecompute", ">= 1.1.4")
    store_path = "imagebuilder.clouds.gcp.store:GcpImageStore"
    sdk_extra = "gcp"
    estimate_s = 700.0
    obsolete_stage = True

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        return f"cluster-api-{os_id}-v{kubernetes_version.replace('.', '-')}-{{timestamp}}"  # no dots in GCE names

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "gcp_project_id": settings["project_id"],
            "gcp_zone": settings["zone"],
            "gcp_machine_type": settings["machine_type"],
            "gcp_network": settings["network"] or "",
            "gcp_subnetwork": settings["subnetwork"] or "",
            "gcp_source_image_family": cell.base_image["family"],
            "gcp_source_image_project": cell.base_image["project"],
            **({"gcp_source_image": context.resolved["image"]} if context.resolved else {}),
            "gcp_image_family": image_family(cell.os, cell.kubernetes, cell.arch, cell.variant),
            "gcp_image_labels": context.gcp_labels,
            "gcp_storage_locations": settings["storage_locations"],
        }

    def resolve_base(self, resolver: Resolver, cell: Cell) -> dict[str, Any]:
        """images.getFromFamily: the family's current image."""
        reference = {"project": cell.base_image["project"], "family": cell.base_image["family"]}
        store = resolver.store(cell, "global")

        def ask() -> dict[str, Any]:
            from imagebuilder.clouds.gcp.store import Missing

            try:
                image = store.call("getFromFamily", reference["family"],
                                   lambda: store.images.get_from_family(project=reference["project"],
                                                                        family=reference["family"]))
            except Missing:
                return {}
            return {"image": image.name, "id": str(image.id)}

        found = resolver.lookup(self.name, "global", reference, ask)
        if not found:
            raise resolver.unresolvable(cell, f"project {reference['project']} has no image in family "
                                        f"{reference['family']}", "check the family in imagebuilder/osinfo.py")
        return found


CLOUD = Gcp()
