"""The settings of `clouds.openstack` in the matrix, with their defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from imagebuilder.models import CloudSettings


class OpenstackSettings(CloudSettings):
    max_parallel: int = Field(4, ge=1)  # builds of this cloud at once (quotas)
    cloud: str | None = None  # entry in clouds.yaml; credentials stay there or in OS_* variables
    flavor: str = "m1.medium"
    networks: list[str] = Field(default_factory=list)
    floating_ip_network: str | None = None
    visibility: Literal["private", "shared", "community", "public"] = "private"
    members: list[str] = Field(default_factory=list)  # project ids the image is shared with (visibility: shared)
    volume_size_gb: int | None = None

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "visibility", "members"})

    @model_validator(mode="after")
    def _members_need_shared(self) -> OpenstackSettings:
        if self.members and self.visibility != "shared":
            raise ValueError(f"members are only honoured by Glance on shared images (visibility is "
                             f"'{self.visibility}') | fix: set visibility: shared, or remove members")
        return self
