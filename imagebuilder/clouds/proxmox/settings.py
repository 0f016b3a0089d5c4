"""The settings of `clouds.proxmox` in the matrix, with their defaults. The password or API token
secret is never here: the proxmox builder reads PROXMOX_PASSWORD itself (and PROXMOX_URL and
PROXMOX_USERNAME where `url` and `username` are not set)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from imagebuilder.models import CloudSettings, Variant


class ProxmoxSettings(CloudSettings):
    max_parallel: int = Field(2, ge=1)  # builds of this cloud at once
    url: str | None = None  # https://<host>:8006/api2/json; None: PROXMOX_URL
    username: str | None = None  # user@realm, or user@realm!tokenid; None: PROXMOX_USERNAME
    insecure_skip_tls_verify: bool = False  # true only for a node with a self-signed certificate
    node: str  # the Proxmox VE node the build VM runs on
    pool: str | None = None  # the resource pool the template joins
    iso_storage_pool: str = "local"  # where Packer uploads the installer ISO
    storage_pool: str = "local-lvm"  # where the VM's disk lives
    storage_pool_type: Literal["lvm", "lvm-thin", "zfspool", "directory", "cephfs", "rbd", "nfs"] = "lvm-thin"
    disk_format: Literal["raw", "qcow2"] = "raw"  # qcow2 only on file-based storage (directory, nfs)
    bridge: str = "vmbr0"
    vlan_tag: int | None = Field(None, ge=1, le=4094)
    cores: int = Field(2, ge=1)
    sockets: int = Field(1, ge=1)
    memory_mb: int = Field(4096, ge=1024)
    disk_gib: int = Field(20, ge=10)
    cpu_type: str = "host"
    # The efi variant's EFI disk (OVMF's variables): this storage; None: storage_pool.
    efi_storage_pool: str | None = None

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "url", "username", "insecure_skip_tls_verify", "node", "pool",
                                   "iso_storage_pool", "storage_pool", "bridge", "vlan_tag", "efi_storage_pool"})
    # image-builder's proxmox-*-efi: OVMF firmware and an EFI disk (the proxmox plugin's `bios` and
    # `efi_config`, which Packer 1.6.6's built-in proxmox builder lacks).
    VARIANTS = {
        "efi": Variant("boots with UEFI firmware (OVMF, with an EFI disk for its variables)", build={"firmware": "efi"}),
    }
