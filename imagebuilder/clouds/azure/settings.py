"""The settings of `clouds.azure` in the matrix, with their defaults."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings, Variant


class AzureSettings(CloudSettings):
    max_parallel: int = Field(5, ge=1)  # builds of this cloud at once (quotas)
    resource_group: str
    gallery: str = "capi_images"
    location: str = "westeurope"
    vm_size: str = "Standard_D2s_v3"
    target_regions: list[str] = Field(default_factory=list)
    replica_count: int = Field(1, ge=1)
    storage_account: str | None = None  # for uploading locally built VHDs as page blobs
    # Blob container (in storage_account) for each image's SBOM and provenance
    # (<container>/<sbom_prefix><definition>/<version>.sbom.cdx.json); none: not kept in Azure (`images sbom` says so)
    sbom_container: str | None = None
    sbom_prefix: str = "sbom/"

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "target_regions", "replica_count", "storage_account",
                                   "sbom_container", "sbom_prefix"})
    # The default cells start from the vendors' generation 2 SKUs already, with the Standard security type.
    VARIANTS = {
        "gen1": Variant("a Hyper-V generation 1 (BIOS) gallery image from the vendor's generation 1 SKU "
                        "(image-builder's plain azure-sig targets)", build={"hyper_v_generation": "V1"},
                        own_base_image=True),
        "cvm": Variant("a confidential VM image: the vendor's CVM SKU, security type ConfidentialVM, built on "
                       "an AMD SEV-SNP size", settings={"vm_size": "Standard_DC2as_v5"},
                       build={"security_type": "ConfidentialVM"}, own_base_image=True),
        "trustedlaunch": Variant("security type TrustedLaunch (secure boot and vTPM) on the usual SKU",
                                 build={"security_type": "TrustedLaunch"}),
    }


def hyper_v_generation(variant: str | None) -> str:
    """A gallery image definition's Hyper-V generation: V2 unless the cell's variant says V1 (gen1).
    Packer's azure-arm takes the generation from the base SKU; the definition must match it."""
    known = AzureSettings.VARIANTS.get(variant or "")
    return known.build.get("hyper_v_generation", "V2") if known else "V2"
