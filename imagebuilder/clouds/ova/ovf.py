"""An OVA from a disk: a streamOptimized VMDK, an OVF 1.x descriptor, a manifest of SHA256 sums,
tarred descriptor first (DMTF DSP0243 "OVF" 1.1: the .ovf is the first file of the archive, the
manifest follows it, then the files References names, in that order).

The descriptor is what vSphere's import (and ovftool) reads: References (the VMDK, its size),
DiskSection (capacity, the streamOptimized format), NetworkSection, one VirtualSystem with its
OperatingSystemSection, a VirtualHardwareSection (vmx-N; CPU, memory, SCSI controller, disk,
VMXNET3 NIC as CIM RASD items, their elements in the schema's alphabetical order; for an efi disk
`vmw:Config firmware=efi` after them) and a
ProductSection with the properties image-builder sets (KUBERNETES_SEMVER, DISTRO_NAME, ...).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.atomicfile import replacing, write_atomically
from imagebuilder.clouds.disks import disk_format, run_tool

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW = "http://www.vmware.com/schema/ovf"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NAMESPACES = {"ovf": OVF, "rasd": RASD, "vssd": VSSD, "vmw": VMW, "xsi": XSI}
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
MIB = "byte * 2^20"
# CIM ResourceType values (DSP1041)
CPU, MEMORY, SCSI_CONTROLLER, ETHERNET, DISK = 3, 4, 6, 10, 17
# The guest OS ids of vSphere (vmw:osType) and the CIM OS type (ovf:id) of each distribution.
GUEST_OS = {"ubuntu": ("ubuntu64Guest", 94), "debian": ("debian11_64Guest", 96),
            "rockylinux": ("rockylinux_64Guest", 80), "flatcar": ("other5xLinux64Guest", 101)}
DEFAULT_GUEST_OS = ("other5xLinux64Guest", 101)


@dataclass(frozen=True)
class Product:
    """What the ProductSection says: image-builder's property names, and our build key (and, for an
    image built on another OVA, that OVA's). A base image (the OS alone) has no Kubernetes."""

    name: str
    kubernetes_semver: str | None  # v1.35.1; None: the OS alone
    distro_name: str  # ubuntu
    distro_version: str  # 24.04
    distro_arch: str  # amd64
    build_key: str
    build_timestamp: str
    versions: dict[str, str]
    imagebuilder_version: str
    base_build_key: str = ""  # the build key of the OVA this one was built on (the vmx flavour's base)

    def properties(self) -> dict[str, str]:
        common = {
            "BUILD_TIMESTAMP": self.build_timestamp,
            "DISTRO_ARCH": self.distro_arch,
            "DISTRO_NAME": self.distro_name,
            "DISTRO_VERSION": self.distro_version,
            "IMAGE_BUILDER_VERSION": self.imagebuilder_version,
            "IMAGEBUILDER_BUILD_KEY": self.build_key,
            **({"IMAGEBUILDER_BASE_BUILD_KEY": self.base_build_key} if self.base_build_key else {}),
        }
        if self.kubernetes_semver is None:
            return common
        return {
            **common,
            "CNI_VERSION": self.versions.get("cni_plugins", ""),
            "CONTAINERD_VERSION": self.versions.get("containerd", ""),
            "KUBERNETES_SEMVER": self.kubernetes_semver,
            "KUBERNETES_SOURCE_TYPE": "http",  # the release binaries, pinned by sha256
            "VERSIONS": json.dumps(self.versions, sort_keys=True, separators=(",", ":")),
        }

    @property
    def summary(self) -> str:
        os_name = f"{self.distro_name} {self.distro_version}"
        return f"{os_name}, the OS alone (no Kubernetes)" if self.kubernetes_semver is None else \
            f"Kubernetes {self.kubernetes_semver} node on {os_name}"

    @property
    def version(self) -> str:
        return self.kubernetes_semver or self.distro_version


@dataclass(frozen=True)
class Hardware:
    version: int  # vmx-N
    cpus: int
    memory_mb: int
    network: str
    firmware: str = "bios"  # "efi": the VM boots with UEFI, as vSphere reads it from vmw:Config firmware


@dataclass(frozen=True)
class OvaFiles:
    ova: Path
    sums: Path  # <name>.ova.sha256sum


def _q(namespace: str, tag: str) -> str:
    return f"{{{namespace}}}{tag}"


def _sub(parent: ET.Element, namespace: str, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, _q(namespace, tag), {_q(OVF, k): v for k, v in attributes.items()})
    if text is not None:
        element.text = text
    return element


def _item(section: ET.Element, fields: dict[str, str]) -> None:
    """A RASD item, its elements in the CIM schema's (alphabetical) order, as vSphere requires."""
    item = _sub(section, OVF, "Item")
    for name in sorted(fields):
        _sub(item, RASD, name, fields[name])


def descriptor(name: str, vmdk_name: str, vmdk_size: int, capacity_bytes: int, hardware: Hardware,
               product: Product) -> bytes:
    # Every element and attribute prefixed (ovf:href): an unprefixed attribute is in no namespace.
    for prefix, uri in NAMESPACES.items():
        ET.register_namespace(prefix, uri)
    envelope = ET.Element(_q(OVF, "Envelope"))
    references = _sub(envelope, OVF, "References")
    _sub(references, OVF, "File", href=vmdk_name, id="file1", size=str(vmdk_size))

    disks = _sub(envelope, OVF, "DiskSection")
    _sub(disks, OVF, "Info", "Virtual disk information")
    _sub(disks, OVF, "Disk", capacity=str(-(-capacity_bytes // 2**20)), capacityAllocationUnits=MIB,
         diskId="vmdisk1", fileRef="file1", format=STREAM_OPTIMIZED)

    networks = _sub(envelope, OVF, "NetworkSection")
    _sub(networks, OVF, "Info", "The list of logical networks")
    network = _sub(networks, OVF, "Network", name=hardware.network)
    _sub(network, OVF, "Description", f"The {hardware.network} network")

    system = _sub(envelope, OVF, "VirtualSystem", id=name)
    _sub(system, OVF, "Info", "A Kubernetes node image" if product.kubernetes_semver else "An operating system base image")
    _sub(system, OVF, "Name", name)
    guest, cim_id = GUEST_OS.get(product.distro_name, DEFAULT_GUEST_OS)
    os_section = _sub(system, OVF, "OperatingSystemSection", id=str(cim_id))
    os_section.set(_q(VMW, "osType"), guest)
    _sub(os_section, OVF, "Info", "The kind of installed guest operating system")

    hardware_section = _sub(system, OVF, "VirtualHardwareSection")
    _sub(hardware_section, OVF, "Info", "Virtual hardware requirements")
    settings = _sub(hardware_section, OVF, "System")
    for tag, text in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                      ("VirtualSystemIdentifier", name), ("VirtualSystemType", f"vmx-{hardware.version}")):
        _sub(settings, VSSD, tag, text)
    _item(hardware_section, {"AllocationUnits": "hertz * 10^6", "Description": "Number of Virtual CPUs",
                             "ElementName": f"{hardware.cpus} virtual CPU(s)", "InstanceID": "1",
                             "ResourceType": str(CPU), "VirtualQuantity": str(hardware.cpus)})
    _item(hardware_section, {"AllocationUnits": MIB, "Description": "Memory Size",
                             "ElementName": f"{hardware.memory_mb}MB of memory", "InstanceID": "2",
                             "ResourceType": str(MEMORY), "VirtualQuantity": str(hardware.memory_mb)})
    _item(hardware_section, {"Address": "0", "Description": "SCSI Controller", "ElementName": "SCSI Controller 0",
                             "InstanceID": "3", "ResourceSubType": "VirtualSCSI",
                             "ResourceType": str(SCSI_CONTROLLER)})
    _item(hardware_section, {"AddressOnParent": "0", "ElementName": "Hard Disk 1",
                             "HostResource": "ovf:/disk/vmdisk1", "InstanceID": "4", "Parent": "3",
                             "ResourceType": str(DISK)})
    _item(hardware_section, {"AddressOnParent": "7", "AutomaticAllocation": "true", "Connection": hardware.network,
                             "Description": "VmxNet3 ethernet adapter", "ElementName": "Network adapter 1",
                             "InstanceID": "5", "ResourceSubType": "VmxNet3", "ResourceType": str(ETHERNET)})
    # After the items (the section's extension elements): vSphere's boot firmware, as its own exports say
    # it; without it a VM boots BIOS, and an efi disk (GPT, EFI system partition) finds no bootloader.
    if hardware.firmware != "bios":
        config = ET.SubElement(hardware_section, _q(VMW, "Config"))
        config.set(_q(OVF, "required"), "false")
        config.set(_q(VMW, "key"), "firmware")
        config.set(_q(VMW, "value"), hardware.firmware)

    product_section = _sub(system, OVF, "ProductSection")
    _sub(product_section, OVF, "Info", "Information about the installed software")
    _sub(product_section, OVF, "Product", product.summary)
    _sub(product_section, OVF, "Vendor", "imagebuilder")
    _sub(product_section, OVF, "Version", product.version)
    _sub(product_section, OVF, "FullVersion", f"{product.version}+{product.build_key[:16]}")
    for key, value in sorted(product.properties().items()):
        _sub(product_section, OVF, "Property", key=key, type="string", userConfigurable="false", value=value)
    ET.indent(envelope)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(envelope, encoding="utf-8") + b"\n"


def manifest(files: dict[str, bytes | Path]) -> bytes:
    """`SHA256(<name>)= <hex>` per file, as ovftool writes and vSphere checks."""
    lines = []
    for name, content in files.items():
        digest = hashlib.sha256(content).hexdigest() if isinstance(content, bytes) else _file_sha256(content)
        lines.append(f"SHA256({name})= {digest}\n")
    return "".join(lines).encode()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * 1024**2):
            digest.update(chunk)
    return digest.hexdigest()


def _add(archive: tarfile.TarFile, name: str, content: bytes | Path) -> None:
    if isinstance(content, Path):
        archive.add(content, arcname=name, recursive=False, filter=_plain)
        return
    import io

    info = _plain(tarfile.TarInfo(name))
    info.size = len(content)
    archive.addfile(info, io.BytesIO(content))


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    info.mtime = 0
    return info


def build_ova(source: Path, name: str, hardware: Hardware, product: Product) -> OvaFiles:
    """<name>.ova (and its .sha256sum) beside source: the disk as a streamOptimized VMDK, the
    descriptor, the manifest; written under a temporary name and renamed whole."""
    work = source.parent
    vmdk = work / f"{name}-disk1.vmdk"
    run_tool(["qemu-img", "convert", "-f", disk_format(source), "-O", "vmdk", "-o", "subformat=streamOptimized",
              str(source), str(vmdk)], source)
    capacity = int(json.loads(run_tool(["qemu-img", "info", "--output=json", str(source)], source))["virtual-size"])
    ovf = descriptor(name, vmdk.name, vmdk.stat().st_size, capacity, hardware, product)
    mf = manifest({f"{name}.ovf": ovf, vmdk.name: vmdk})
    ova = work / f"{name}.ova"
    try:
        with replacing(ova, binary=True) as out, \
                tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            _add(archive, f"{name}.ovf", ovf)
            _add(archive, f"{name}.mf", mf)
            _add(archive, vmdk.name, vmdk)
    finally:
        vmdk.unlink(missing_ok=True)
    sums = ova.with_name(ova.name + ".sha256sum")
    write_atomically(sums, f"{_file_sha256(ova)}  {ova.name}\n")
    return OvaFiles(ova=ova, sums=sums)
