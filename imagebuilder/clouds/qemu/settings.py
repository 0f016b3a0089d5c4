"""The settings of `clouds.qemu` in the matrix, with their defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from imagebuilder import immutable
from imagebuilder.models import CloudSettings, Variant

# The variants of every local output (raw and ova too).
LOCAL_VARIANTS = {
    "efi": Variant("boots with UEFI firmware (OVMF) instead of BIOS", build={"firmware": "efi"}),
}


class QemuSettings(CloudSettings):
    max_parallel: int = Field(1, ge=1)  # builds of this cloud at once (quotas)
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"
    # "offline": the roles applied to the base root file system on this host, no build VM
    # (imagebuilder/offline.py); "packer": the qemu template in a VM; "auto": Packer when KVM
    # works, else offline. Both make the same image (tests/test_e2e_qemu.py compares them),
    # so the choice stays out of the build key.
    builder: Literal["auto", "offline", "packer"] = "auto"
    disk_size_mb: int = Field(8192, ge=2048)
    memory_mb: int = Field(2048, ge=512)
    cpus: int = Field(2, ge=1)
    boot_test: bool = True  # boot the qcow2 and run the validate role's checks in it before publishing

    # Neither changes the image: the builders make the same one, the boot test only reads it.
    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "builder", "boot_test"})
    # image-builder's immutable targets are qemu's and kubevirt-qemu's only.
    VARIANTS = {**LOCAL_VARIANTS, immutable.NAME: immutable.VARIANT}
