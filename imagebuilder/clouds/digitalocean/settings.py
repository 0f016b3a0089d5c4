"""The settings of `clouds.digitalocean` in the matrix, with their defaults. No credentials here: the
digitalocean builder reads DIGITALOCEAN_API_TOKEN itself."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class DigitaloceanSettings(CloudSettings):
    max_parallel: int = Field(4, ge=1)  # builds of this cloud at once (the account's droplet limit)
    region: str = "nyc1"  # where the build droplet runs and the snapshot is first kept
    size: str = "s-2vcpu-4gb"  # the build droplet (image-builder's s-1vcpu-1gb is short of memory for kubeadm's images)
    snapshot_regions: list[str] = Field(default_factory=list)  # further regions the snapshot is copied to

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "snapshot_regions"})
