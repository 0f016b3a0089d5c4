"""Oracle Cloud Infrastructure: custom images built with Packer's oracle-oci builder
(image-builder's `oci-*` targets).

imagebuilder does not manage these images yet (no OCI API emulator or stand-in here to test a store
against): the image stays in the compartment of the settings, tagged with the image metadata, and
`images`/`prune` skip this cloud (registry.Cloud.store_path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.oci.settings import OciSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext, cluster_api_image_name

if TYPE_CHECKING:
    from imagebuilder.planner import Cell


class Oci(Cloud):
    name = "oci"
    settings = OciSettings
    order = 30
    builder = "oracle-oci"
    image_builder_names = ("oci",)
    plugin = Plugin("oracle", "github.com/hashicorp/oracle", ">= 1.1.0")
    store_path = None
    image_location = "the compartment of clouds.oci, as a custom image"
    estimate_s = 900.0

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        return cluster_api_image_name(os_id, kubernetes_version, arch)

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "oci_access_cfg_file": settings["access_cfg_file"],
            "oci_access_cfg_file_account": settings["access_cfg_file_account"],
            "oci_availability_domain": settings["availability_domain"],
            "oci_compartment_ocid": settings["compartment_ocid"],
            "oci_subnet_ocid": settings["subnet_ocid"],
            "oci_shape": settings["shape"],
            **({"oci_ocpus": settings["ocpus"]} if settings["ocpus"] else {}),
            # The platform image of the OS, by OCI's own operating system name and version.
            "oci_operating_system": cell.base_image["operating_system"],
            "oci_operating_system_version": cell.base_image["operating_system_version"],
            "oci_tags": context.metadata_tags,
        }

    def template_context(self, cell: Cell) -> dict[str, Any]:
        return {"flexible_shape": bool(cell.settings["ocpus"])}


CLOUD = Oci()
