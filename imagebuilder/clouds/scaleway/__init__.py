"""Scaleway: instance images built with Packer's scaleway builder (image-builder's `scaleway-*` targets).

imagebuilder does not manage these images yet (no Scaleway API stand-in here to test a store
against): the image stays in the zone and project of the build, and `images`/`prune` skip this
cloud (registry.Cloud.store_path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext, cluster_api_image_name
from imagebuilder.clouds.scaleway.settings import ScalewaySettings

if TYPE_CHECKING:
    from imagebuilder.planner import Cell


class Scaleway(Cloud):
    name = "scaleway"
    settings = ScalewaySettings
    order = 32
    builder = "scaleway"
    image_builder_names = ("scaleway",)
    plugin = Plugin("scaleway", "github.com/scaleway/scaleway", ">= 1.3.2")
    store_path = None
    image_location = "the Scaleway zone of clouds.scaleway, as an image of the project of SCW_DEFAULT_PROJECT_ID"
    ssh_user = "root"  # Scaleway's marketplace images log in as root (image-builder's ssh_username)
    estimate_s = 900.0
    # The builder's configuration check wants the keys and project set; validate uses none of them.
    validate_env = {"SCW_ACCESS_KEY": "SCWXXXXXXXXXXXXXXXXX", "SCW_SECRET_KEY": "11111111-1111-1111-1111-111111111111",
                    "SCW_DEFAULT_PROJECT_ID": "11111111-1111-1111-1111-111111111111"}

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        return cluster_api_image_name(os_id, kubernetes_version, arch)

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "scaleway_zone": settings["zone"],
            "scaleway_commercial_type": settings["commercial_type_arm64" if cell.arch == "arm64" else "commercial_type"],
            "scaleway_image": cell.base_image["image"],  # the marketplace image's label (ubuntu_noble)
        }


CLOUD = Scaleway()
