"""Hetzner Cloud: snapshots built with Packer's hcloud builder (image-builder's `hcloud-*` targets).

Flatcar (no Hetzner image of it) is installed from the rescue system and baked before it boots, as the
local build bakes it (imagebuilder/flatcar.py: flatcar-install with Hetzner's OEM, then the sysext
onto the ROOT partition); the snapshot's first boot runs Ignition with the node's user data.

imagebuilder does not manage these images yet (no emulator of the Hetzner Cloud API to test a
store against): the snapshot stays in the project the token belongs to, labelled with the image
metadata, and `images`/`prune` skip this cloud (registry.Cloud.store_path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.hcloud.settings import HcloudSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext

if TYPE_CHECKING:
    from imagebuilder.planner import Cell


class Hcloud(Cloud):
    name = "hcloud"
    settings = HcloudSettings
    order = 20
    builder = "hcloud"
    image_builder_names = ("hcloud",)
    plugin = Plugin("hcloud", "github.com/hetznercloud/hcloud", ">= 1.6.0")
    store_path = None
    image_location = "the Hetzner Cloud project of HCLOUD_TOKEN, as a snapshot"
    ssh_user = "root"  # Hetzner's system images log in as root with the builder's throw-away key
    estimate_s = 600.0
    validate_env = {"HCLOUD_TOKEN": "validate-only"}  # the builder's check wants a token; validate uses none

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        """image-builder's `cluster-api-<build name>-<kubernetes semver>-<timestamp>`."""
        return f"cluster-api-{os_id}{'' if arch == 'amd64' else f'-{arch}'}-v{kubernetes_version}-{{timestamp}}"

    def template_context(self, cell: Cell) -> dict[str, Any]:
        """A Flatcar cell boots the server's rescue system (its OS reference names which) and bakes from it."""
        rescue = cell.base_image.get("rescue")
        if rescue is None:
            return {"rescue": ""}
        from imagebuilder import flatcar

        name = flatcar.sysext_file_name(cell.kubernetes_version, cell.arch)
        steps = flatcar.rescue_commands(name, cell.arch, cell.base_image["oem"], cell.base_image["channel"])
        return {"rescue": rescue, **flatcar.packer_context(cell, steps, [])}

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "hcloud_image": cell.base_image["image"],
            "hcloud_location": settings["location"],
            "hcloud_server_type": settings["server_type_arm64" if cell.arch == "arm64" else "server_type"],
            # Hetzner labels have GCP's limits (63 characters, [a-z0-9_.-]): the GCP spelling of the metadata.
            "hcloud_labels": context.gcp_labels,
        }


CLOUD = Hcloud()
