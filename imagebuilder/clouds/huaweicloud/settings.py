"""The settings of `clouds.huaweicloud` in the matrix, with their defaults. No credentials here: the
huaweicloud-ecs builder reads HW_ACCESS_KEY and HW_SECRET_KEY itself."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class HuaweicloudSettings(CloudSettings):
    max_parallel: int = Field(4, ge=1)  # builds of this cloud at once
    region: str = "ap-southeast-1"  # image-builder's default region
    availability_zone: str = "ap-southeast-1g"
    flavor: str = "x1.2u.4g"  # the build ECS
    vpc_id: str  # the build ECS's VPC and subnet (Packer must reach it over SSH through its EIP)
    subnet_id: str
    volume_size_gb: int = Field(20, ge=10)
    volume_type: str = "GPSSD"
    eip_type: str = "5_bgp"
    eip_bandwidth_size: int = Field(5, ge=1)

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "region", "availability_zone", "vpc_id", "subnet_id",
                                   "eip_type", "eip_bandwidth_size"})
