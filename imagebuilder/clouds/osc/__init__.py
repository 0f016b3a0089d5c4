"""Outscale: OMIs built with the outscale plugin's outscale-bsu builder (image-builder's `osc-*`
targets). Packer 1.6.6 carries no Outscale builder (its `packer validate` lists the builders it
knows, osc-bsu not among them): `validate` parses the HCL and `build` needs a Packer >= 1.7 that
installs the plugin (registry.Cloud.packer_builtin).

imagebuilder does not manage these images yet (no Outscale API stand-in here to test a store
against): the OMI stays in the region of the settings, tagged with the image metadata, and
`images`/`prune` skip this cloud (registry.Cloud.store_path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.osc.settings import OscSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext, cluster_api_image_name

if TYPE_CHECKING:
    from imagebuilder.planner import Cell

# The owner of Outscale's own OS images (image-builder's source_omi_filter).
OUTSCALE_OWNER = "Outscale"


class Osc(Cloud):
    name = "osc"
    settings = OscSettings
    order = 31
    builder = "outscale-bsu"
    packer_builtin = False
    image_builder_names = ("osc",)
    plugin = Plugin("outscale", "github.com/outscale/outscale", ">= 1.2.0")
    store_path = None
    image_location = "the Outscale region of clouds.osc, as an OMI"
    ssh_user = "outscale"  # Outscale's OS images log in as `outscale` (image-builder's ssh_username)
    estimate_s = 900.0

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        return cluster_api_image_name(os_id, kubernetes_version, arch)

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "osc_region": settings["region"],
            "osc_vm_type": settings["vm_type"],
            "osc_volume_size_gb": settings["volume_size_gb"],
            "osc_omi_account_ids": settings["omi_account_ids"],
            "osc_global_permission": settings["global_permission"],
            "osc_source_omi_name": cell.base_image["image_name"],
            "osc_source_omi_owner": OUTSCALE_OWNER,
        }


CLOUD = Osc()
