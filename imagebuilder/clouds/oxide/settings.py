"""The settings of `clouds.oxide` in the matrix, with their defaults. No credentials here: the oxide
builder reads OXIDE_HOST and OXIDE_TOKEN itself."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class OxideSettings(CloudSettings):
    max_parallel: int = Field(2, ge=1)  # builds of this cloud at once
    project: str  # the project the build instance runs in and the image goes to
    vpc: str = "default"
    subnet: str = "default"
    boot_disk_size_gib: int = Field(20, ge=10)
    # The silo's images are named in the OS table (an Ubuntu image uploaded as "ubuntu-24.04"); the
    # builder takes their ids: image name -> image id in this silo.
    boot_disk_image_ids: dict[str, str] = Field(default_factory=dict)

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "project", "vpc", "subnet", "boot_disk_image_ids"})
