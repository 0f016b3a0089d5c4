"""DigitalOcean: droplet snapshots built with Packer's digitalocean builder (image-builder's `do-*` targets).

imagebuilder does not manage these images yet (no DigitalOcean API stand-in here to test a store
against): the snapshot stays in the account of the token, and `images`/`prune` skip this cloud
(registry.Cloud.store_path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.digitalocean.settings import DigitaloceanSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext, cluster_api_image_name

if TYPE_CHECKING:
    from imagebuilder.planner import Cell


class Digitalocean(Cloud):
    name = "digitalocean"
    settings = DigitaloceanSettings
    order = 33
    builder = "digitalocean"
    image_builder_names = ("do",)
    plugin = Plugin("digitalocean", "github.com/digitalocean/digitalocean", ">= 1.1.1")
    store_path = None
    image_location = "the DigitalOcean account of DIGITALOCEAN_API_TOKEN, as a snapshot"
    ssh_user = "root"  # DigitalOcean's distribution images log in as root
    estimate_s = 900.0
    validate_env = {"DIGITALOCEAN_API_TOKEN": "validate-only"}  # the builder's check wants a token; validate uses none

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        return cluster_api_image_name(os_id, kubernetes_version, arch)

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "digitalocean_region": settings["region"],
            "digitalocean_size": settings["size"],
            "digitalocean_snapshot_regions": [settings["region"], *settings["snapshot_regions"]],
            "digitalocean_image": cell.base_image["image"],  # the distribution image's slug (ubuntu-24-04-x64)
        }


CLOUD = Digitalocean()
