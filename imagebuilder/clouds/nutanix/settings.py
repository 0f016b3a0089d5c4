"""The settings of `clouds.nutanix` in the matrix, with their defaults. No credentials here: the
template reads NUTANIX_USERNAME and NUTANIX_PASSWORD from the environment (Packer's env())."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class NutanixSettings(CloudSettings):
    max_parallel: int = Field(2, ge=1)  # builds of this cloud at once
    endpoint: str  # Prism Central's address
    port: int = Field(9440, ge=1, le=65535)
    insecure: bool = False  # accept Prism Central's certificate unchecked
    cluster_name: str  # the Prism Element cluster the build VM runs on
    subnet_name: str  # the build VM's subnet (Packer must reach it over SSH)
    cpus: int = Field(2, ge=1)
    memory_mb: int = Field(4096, ge=2048)
    disk_size_gb: int = Field(20, ge=10)
    boot_type: str = "legacy"  # or "uefi"

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "endpoint", "port", "insecure", "cluster_name", "subnet_name"})
