"""The settings of `clouds.hcloud` in the matrix, with their defaults. The API token is never here:
the hcloud builder reads HCLOUD_TOKEN itself."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class HcloudSettings(CloudSettings):
    max_parallel: int = Field(4, ge=1)  # builds of this cloud at once (the project's server limit)
    location: str = "fsn1"  # where the build server runs; a snapshot is usable in every location
    server_type: str = "cx22"  # the build server of amd64 cells (shared x86)
    server_type_arm64: str = "cax11"  # the build server of arm64 cells (Ampere)

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "location"})
