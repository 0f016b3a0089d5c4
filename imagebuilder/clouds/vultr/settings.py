"""The settings of `clouds.vultr` in the matrix, with their defaults. No credentials here: the vultr
builder reads VULTR_API_KEY itself."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class VultrSettings(CloudSettings):
    max_parallel: int = Field(4, ge=1)  # builds of this cloud at once
    region: str = "ewr"  # where the build instance runs (image-builder's default)
    plan: str = "vc2-2c-4gb"  # the build instance (image-builder's vc2-1c-1gb is short of memory for kubeadm's images)

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "region"})
