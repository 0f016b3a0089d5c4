"""The settings of `clouds.ova` in the matrix: the qemu build's, and the OVA's virtual hardware."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.clouds.qemu.settings import QemuSettings


class OvaSettings(QemuSettings):
    # vmx-15: vSphere 6.7 U2 and later, image-builder's default (its `vmx_version`)
    hardware_version: int = Field(15, ge=10)
    network: str = "VM Network"  # the OVF network the NIC connects to; mapped at import
    # The OVA's descriptor carries these (the VM's CPUs and memory, the cpus/memory_mb the build
    # VM used are qemu's): in the build key, they are part of the file.
    ova_cpus: int = Field(2, ge=1)
    ova_memory_mb: int = Field(4096, ge=512)
