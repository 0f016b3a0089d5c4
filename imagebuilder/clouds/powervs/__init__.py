"""IBM Power Virtual Server: ppc64le images built with the powervs plugin's builder from the OVA
image-builder's PowerVS builds import from IBM Cloud Object Storage, captured to a bucket as an OVA
(image-builder's `powervs-*` targets; `-dhcp` is its variant for a DHCP network). Packer 1.6.6 lacks
this builder: `validate` parses the HCL and `build` needs a Packer >= 1.7 that installs the plugin
(registry.Cloud.packer_builtin).

imagebuilder does not manage these images yet (no PowerVS or Cloud Object Storage stand-in here to
test a store against): the OVA stays in clouds.powervs.capture_cos_bucket, and `images`/`prune`
skip this cloud. PowerVS runs POWER machines only: its cells are ppc64le (Cloud.arches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.powervs.settings import PowervsSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext

if TYPE_CHECKING:
    from imagebuilder.planner import Cell


class Powervs(Cloud):
    name = "powervs"
    settings = PowervsSettings
    order = 45
    builder = "powervs"
    packer_builtin = False
    image_builder_names = ("powervs",)
    plugin = Plugin("powervs", "github.com/ppc64le-cloud/powervs", ">= 0.0.1")
    store_path = None
    image_location = "the Cloud Object Storage bucket clouds.powervs.capture_cos_bucket, as an OVA"
    ssh_user = "root"  # the OVAs log in as root (image-builder's ssh_username)
    estimate_s = 3600.0
    arches = ("ppc64le",)
    arch_reason = "Power Virtual Server runs POWER machines"

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        # image-builder's capibm-powervs-<build name>-<kubernetes version, dots as dashes>-<timestamp>
        return f"capibm-powervs-{os_id}-{kubernetes_version.replace('.', '-')}-{{timestamp}}"

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            **({"powervs_account_id": settings["account_id"]} if settings["account_id"] else {}),
            "powervs_service_instance_id": settings["service_instance_id"],
            "powervs_region": settings["region"],
            "powervs_zone": settings["zone"],
            "powervs_key_pair_name": settings["key_pair_name"],
            "powervs_ssh_private_key_file": settings["ssh_private_key_file"],
            "powervs_capture_cos_bucket": settings["capture_cos_bucket"],
            "powervs_capture_cos_region": settings["capture_cos_region"],
            "powervs_source_cos_bucket": cell.base_image["bucket"],
            "powervs_source_cos_object": cell.base_image["object"],
            "powervs_source_cos_region": cell.base_image["region"],
            "powervs_dhcp_network": self.dhcp_network(cell),
        }

    def template_context(self, cell: Cell) -> dict[str, Any]:
        return {"account_id": bool(cell.settings["account_id"])}

    def dhcp_network(self, cell: Cell) -> bool:
        """The build VM on a DHCP network the builder creates: the dhcp variant (settings.py VARIANTS)."""
        variant = self.settings.VARIANTS.get(cell.variant or "")
        return bool(variant and variant.build.get("dhcp_network") == "true")

    def variant_unbuilt(self, cell: Cell, packer_version: tuple[int, int, int] | None = None) -> str | None:
        """The template renders the dhcp variant (dhcp_network and the DHCP OVA); the plugin itself
        needs a Packer >= 1.7, which plugin_missing says for every cell of this cloud."""
        return None


CLOUD = Powervs()
