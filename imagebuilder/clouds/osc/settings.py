"""The settings of `clouds.osc` (Outscale) in the matrix, with their defaults. No credentials here:
the outscale-bsu builder reads OUTSCALE_ACCESSKEYID and OUTSCALE_SECRETKEYID itself."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class OscSettings(CloudSettings):
    max_parallel: int = Field(4, ge=1)  # builds of this cloud at once (the account's VM quota)
    region: str = "eu-west-2"  # Outscale's region of the build and the OMI
    vm_type: str = "tinav5.c2r4p2"  # image-builder's build VM type
    volume_size_gb: int = Field(20, ge=10)  # the root volume of the build VM, and so of the OMI
    omi_account_ids: list[str] = Field(default_factory=list)  # accounts the OMI is shared with
    global_permission: bool = False  # True: every account may launch the OMI (image-builder's default)

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "region", "omi_account_ids", "global_permission"})
