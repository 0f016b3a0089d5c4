"""Azure: Compute Gallery image versions built with azure-arm, replicated to target regions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagebuilder.clouds.azure import versions
from imagebuilder.clouds.azure.naming import image_definition
from imagebuilder.clouds.azure.settings import AzureSettings
from imagebuilder.clouds.registry import Cloud, Plugin, RenderContext

if TYPE_CHECKING:
    from imagebuilder.baseimages import Resolver
    from imagebuilder.planner import Cell


GEN1 = "gen1"  # settings.py VARIANTS: image-builder's plain (generation 1) gallery images


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


class Azure(Cloud):
    name = "azure"
    settings = AzureSettings
    order = 4
    builder = "azure-arm"
    image_builder_names = ("azure-sig",)
    plugin = Plugin("azure", "github.com/hashicorp/azure", ">= 2.1.0")
    store_path = "imagebuilder.clouds.azure.store:AzureImageStore"
    sdk_extra = "azure"
    estimate_s = 1500.0

    def image_builder_target(self, os_id: str, arch: str, variant: str | None) -> str:
        # Our default gallery images are Hyper-V generation 2 (store.py): image-builder's `-gen2`
        # targets; the gen1 variant is its plain `build-azure-sig-<os>`, the cvm variant its `-cvm`.
        suffix = {None: "gen2", GEN1: None}.get(variant, variant)
        return super().image_builder_target(os_id, arch, suffix)

    def copies_per_image(self, settings: dict[str, Any]) -> int:
        regions = max(1, len(settings.get("target_regions", [])))
        return regions * int(settings.get("replica_count", 1))

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        """A gallery image version under the definition of its (os, minor); the patch is the
        build minute (versions.py)."""
        minor = ".".join(kubernetes_version.split(".")[:2])
        return f"{image_definition(os_id, minor, arch)}/{versions.version_pattern(minor)}"

    def image_name_prefix(self, cell: Cell) -> str:
        return f"{cell.id}-"

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        settings = cell.settings
        return {
            "azure_resource_group": settings["resource_group"],
            "azure_gallery": settings["gallery"],
            "azure_location": settings["location"],
            "azure_vm_size": settings["vm_size"],
            "azure_target_regions": settings["target_regions"] or [settings["location"]],
            "azure_image_publisher": cell.base_image["publisher"],
            "azure_image_offer": cell.base_image["offer"],
            "azure_image_sku": cell.base_image["sku"],
            **({"azure_image_version": context.resolved["version"]} if context.resolved else {}),
            "azure_image_definition": image_definition(cell.os, cell.kubernetes, cell.arch, cell.variant),
            "azure_version_prefix": versions.version_prefix(cell.kubernetes),
        }

    def template_context(self, cell: Cell) -> dict[str, Any]:
        return {"azure_build_minute": versions.hcl_patch_expression("local.timestamp"),
                "security_type": self.security_type(cell)}

    def security_type(self, cell: Cell) -> str | None:
        """TrustedLaunch or ConfidentialVM for a variant cell (settings.py VARIANTS), else None."""
        variant = self.settings.VARIANTS.get(cell.variant or "")
        return variant.build.get("security_type") if variant else None

    def old_packer_context(self, cell: Cell) -> dict[str, Any]:
        # Packer 1.6.6's built-in azure-arm has secure_boot_enabled but no security_type or vtpm_enabled.
        return {"security_type": None}

    def variant_unbuilt(self, cell: Cell, packer_version: tuple[int, int, int] | None = None) -> str | None:
        """A security type is set by the azure plugin (security_type, vtpm_enabled, and for
        ConfidentialVM the disk and gallery encryption types), which Packer before 1.7 lacks."""
        from imagebuilder.render import MODERN_PACKER

        security = self.security_type(cell)
        if security is None or packer_version is None or packer_version >= MODERN_PACKER:
            return None
        return (f"{cell.id}: the {cell.variant} variant's security_type {security} needs the azure plugin "
                f"({self.plugin.source} {self.plugin.version}); Packer {'.'.join(map(str, packer_version))}'s "
                f"built-in azure-arm has no security_type | fix: Packer >= {'.'.join(map(str, MODERN_PACKER))} "
                f"(render writes required_plugins), or exclude {{cloud: azure, variant: {cell.variant}}}")

    def resolve_base(self, resolver: Resolver, cell: Cell) -> dict[str, Any]:
        """The marketplace versions of publisher/offer/sku: the highest."""
        location = cell.settings["location"]
        reference = {name: cell.base_image[name] for name in ("publisher", "offer", "sku")}
        store = resolver.store(cell, location)

        def ask() -> dict[str, Any]:
            from imagebuilder.clouds.azure.store import Missing

            try:
                found = store.call("list image versions", "/".join(reference.values()),
                                   lambda: store.client.virtual_machine_images.list(
                                       location, reference["publisher"], reference["offer"], reference["sku"]))
            except Missing:
                return {}
            names = [version.name for version in found or []]
            return {"version": max(names, key=_version_key)} if names else {}

        found = resolver.lookup(self.name, location, reference, ask)
        if not found:
            raise resolver.unresolvable(cell, f"the marketplace has no version of it in {location}",
                                        "check publisher/offer/sku in imagebuilder/osinfo.py")
        return found


CLOUD = Azure()
