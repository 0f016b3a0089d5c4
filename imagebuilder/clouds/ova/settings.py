"""The settings of `clouds.ova` in the matrix: the qemu build's, and the OVA's virtual hardware."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.clouds.qemu.settings import LOCAL_VARIANTS, QemuSettings
from imagebuilder.models import Variant

# image-builder's node-ova-local-base-<os> and node-ova-local-vmx-<os> flavours (Variant.build "flavour"):
# the OS alone, and the node built on that base's disk instead of on the vendor's image.
BASE, VMX = "base", "vmx"


class OvaSettings(QemuSettings):
    # vmx-15: vSphere 6.7 U2 and later, image-builder's default (its `vmx_version`)
    hardware_version: int = Field(15, ge=10)
    network: str = "VM Network"  # the OVF network the NIC connects to; mapped at import
    # The OVA's descriptor carries these (the VM's CPUs and memory, the cpus/memory_mb the build
    # VM used are qemu's): in the build key, they are part of the file.
    ova_cpus: int = Field(2, ge=1)
    ova_memory_mb: int = Field(4096, ge=512)

    # qemu's efi, and the two flavours with BIOS or UEFI firmware; a flavour's target names it before
    # the OS (build-node-ova-local-vmx-ubuntu-2404-efi), as image-builder's Makefile does.
    VARIANTS = {
        **LOCAL_VARIANTS,
        BASE: Variant("the OS alone, no Kubernetes: the OVA of the base disk the vmx flavour builds on",
                      build={"flavour": BASE}),
        VMX: Variant("the node built on the base flavour's OVA (its disk as the base, not the vendor's image)",
                     build={"flavour": VMX}, built_on=BASE),
        f"{BASE}-efi": Variant("the base flavour with UEFI firmware", build={"flavour": BASE, "firmware": "efi"}),
        f"{VMX}-efi": Variant("the vmx flavour with UEFI firmware, built on the base-efi OVA",
                              build={"flavour": VMX, "firmware": "efi"}, built_on=f"{BASE}-efi"),
    }
