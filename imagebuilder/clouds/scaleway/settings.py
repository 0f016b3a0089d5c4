"""The settings of `clouds.scaleway` in the matrix, with their defaults. No credentials here: the
scaleway builder reads SCW_ACCESS_KEY, SCW_SECRET_KEY and SCW_DEFAULT_PROJECT_ID itself."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class ScalewaySettings(CloudSettings):
    max_parallel: int = Field(4, ge=1)  # builds of this cloud at once (the project's quota)
    zone: str = "fr-par-1"  # where the build instance, its snapshot and the image are
    commercial_type: str = "DEV1-S"  # image-builder's build instance type
    commercial_type_arm64: str = "AMP2-C1"  # the build instance of arm64 cells (Ampere)

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "zone"})
