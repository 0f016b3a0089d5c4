"""Vultr: snapshots built with the vultr plugin's builder (image-builder's `vultr-*` targets). Packer
1.6.6 lacks this builder: `validate` parses the HCL and `build` needs a Packer >= 1.7 that installs
the plugin (registry.Cloud.packer_builtin).

imagebuilder does not manage these images yet (no Vultr API stand-in here to test a store against):
the snapshot stays in the account of the key, and `images`/`prune` skip this cloud.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext, cluster_api_image_name
from imagebuilder.clouds.vultr.settings import VultrSettings

if TYPE_CHECKING:
    from imagebuilder.planner import Cell


class Vultr(Cloud):
    name = "vultr"
    settings = VultrSettings
    order = 41
    builder = "vultr"
    packer_builtin = False
    image_builder_names = ("vultr",)
    plugin = Plugin("vultr", "github.com/vultr/vultr", ">= 2.5.0")
    store_path = None
    image_location = "the Vultr account of VULTR_API_KEY, as a snapshot"
    ssh_user = "root"  # Vultr's OS images log in as root
    estimate_s = 900.0

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        return cluster_api_image_name(os_id, kubernetes_version, arch)

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "vultr_region": settings["region"],
            "vultr_plan": settings["plan"],
            "vultr_os_id": int(cell.base_image["os_id"]),  # Vultr's numeric id of the OS image
        }


CLOUD = Vultr()
