"""Oxide: project images built with the oxide plugin's builder (image-builder's `oxide-*` targets).
Packer 1.6.6 lacks this builder: `validate` parses the HCL and `build` needs a Packer >= 1.7 that
installs the plugin (registry.Cloud.packer_builtin).

imagebuilder does not manage these images yet (no Oxide API stand-in here to test a store
against): the image stays in the project of the settings, and `images`/`prune` skip this cloud.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.oxide.settings import OxideSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext, cluster_api_image_name
from imagebuilder.errors import UserError

if TYPE_CHECKING:
    from imagebuilder.planner import Cell


class Oxide(Cloud):
    name = "oxide"
    settings = OxideSettings
    order = 42
    builder = "oxide-instance"
    packer_builtin = False
    image_builder_names = ("oxide",)
    plugin = Plugin("oxide", "github.com/oxidecomputer/oxide", ">= 0.6.0")
    store_path = None
    image_location = "the Oxide project of clouds.oxide, as a project image"
    estimate_s = 900.0

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        # Oxide names are lowercase letters, digits and dashes: the Kubernetes version's dots become dashes.
        return cluster_api_image_name(os_id, kubernetes_version.replace(".", "-"), arch)

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        image = cell.base_image["image_name"]
        image_id = settings["boot_disk_image_ids"].get(image)
        if not image_id:
            raise UserError(f"clouds.oxide.boot_disk_image_ids: no id for the silo image '{image}' ({cell.id}) "
                            f"| fix: add {image}: <its image id> (oxide image list)")
        return {
            "oxide_project": settings["project"],
            "oxide_vpc": settings["vpc"],
            "oxide_subnet": settings["subnet"],
            "oxide_boot_disk_size": settings["boot_disk_size_gib"] * 1024**3,
            "oxide_boot_disk_image_id": image_id,
        }


CLOUD = Oxide()
