"""The operating systems imagebuilder knows, and the stock base image of each per cloud."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Family = Literal["debian", "redhat", "flatcar"]
Strategy = Literal["bake", "sysext"]

# How each vendor spells our architectures in image names, URLs and families (`{arch}` below).
VENDOR_ARCH: dict[Family, dict[str, str]] = {
    "debian": {"amd64": "amd64", "arm64": "arm64"},
    "redhat": {"amd64": "x86_64", "arm64": "aarch64"},
    "flatcar": {"amd64": "amd64", "arm64": "arm64"},
}

# Where the stock qemu base images come from: `mirrors:` in the matrix may name another
# base URL for each (airgapped builds); the build key holds the upstream reference.
BASE_MIRRORS: dict[str, str] = {
    "debian": "http://deb.debian.org/debian",
    "debian_security": "http://deb.debian.org/debian-security",
    "ubuntu_cloud_images": "https://cloud-images.ubuntu.com",
    "rockylinux": "https://dl.rockylinux.org/pub/rocky",
    "flatcar": "https://stable.release.flatcar-linux.net",
}


@dataclass(frozen=True)
class AwsBase:
    name_filter: str
    owner: str


@dataclass(frozen=True)
class GcpBase:
    family: str
    project: str


@dataclass(frozen=True)
class AzureBase:
    publisher: str
    offer: str
    sku: str


@dataclass(frozen=True)
class OsInfo:
    id: str
    distro: str  # os_distro as OpenStack and our metadata spell it
    version: str
    family: Family
    ssh_user: str
    aws: AwsBase
    gcp: GcpBase  # amd64; the vendors publish arm64 images under other families, offers and SKUs
    azure: AzureBase
    openstack_image: str
    qemu_base: str  # "local" (built by imagebuilder.distributions) or a cloud image URL
    # The vendor's checksum file beside the cloud image (GNU `SHA256SUMS` or BSD-style `CHECKSUM`).
    qemu_checksums: str = "SHA256SUMS"
    default_strategy: Strategy = "bake"
    arches: tuple[str, ...] = field(default=("amd64", "arm64"))
    gcp_arm64: GcpBase | None = None  # None: the vendor publishes no arm64 image there
    azure_arm64: AzureBase | None = None

    def gcp_for(self, arch: str) -> GcpBase | None:
        return self.gcp if arch == "amd64" else self.gcp_arm64

    def azure_for(self, arch: str) -> AzureBase | None:
        return self.azure if arch == "amd64" else self.azure_arm64

    def vendor_arch(self, arch: str) -> str:
        """The vendor's name for ``arch`` (Rocky writes x86_64 where Debian writes amd64)."""
        return VENDOR_ARCH[self.family][arch]

    def for_arch(self, template: str, arch: str) -> str:
        """A reference with its ``{arch}`` in the vendor's spelling."""
        return template.replace("{arch}", self.vendor_arch(arch))


OPERATING_SYSTEMS: dict[str, OsInfo] = {
    info.id: info
    for info in (
        OsInfo(
            id="ubuntu-2204", distro="ubuntu", version="22.04", family="debian", ssh_user="ubuntu",
            aws=AwsBase("ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-{arch}-server-*", "099720109477"),
            gcp=GcpBase("ubuntu-2204-lts", "ubuntu-os-cloud"),
            azure=AzureBase("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"),
            gcp_arm64=GcpBase("ubuntu-2204-lts-arm64", "ubuntu-os-cloud"),
            azure_arm64=AzureBase("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-arm64"),
            openstack_image="ubuntu-22.04",
            qemu_base="https://cloud-images.ubuntu.com/releases/jammy/release/ubuntu-22.04-server-cloudimg-{arch}.img",
        ),
        OsInfo(
            id="ubuntu-2404", distro="ubuntu", version="24.04", family="debian", ssh_user="ubuntu",
            aws=AwsBase("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*", "099720109477"),
            gcp=GcpBase("ubuntu-2404-lts-amd64", "ubuntu-os-cloud"),
            azure=AzureBase("Canonical", "ubuntu-24_04-lts", "server"),
            gcp_arm64=GcpBase("ubuntu-2404-lts-arm64", "ubuntu-os-cloud"),
            azure_arm64=AzureBase("Canonical", "ubuntu-24_04-lts", "server-arm64"),
            openstack_image="ubuntu-24.04",
            qemu_base="https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-{arch}.img",
        ),
        OsInfo(
            id="debian-12", distro="debian", version="12", family="debian", ssh_user="debian",
            aws=AwsBase("debian-12-{arch}-*", "136693071363"),
            gcp=GcpBase("debian-12", "debian-cloud"),
            azure=AzureBase("Debian", "debian-12", "12-gen2"),
            gcp_arm64=GcpBase("debian-12-arm64", "debian-cloud"),
            azure_arm64=AzureBase("Debian", "debian-12", "12-arm64"),
            openstack_image="debian-12",
            qemu_base="local",
        ),
        OsInfo(
            id="rockylinux-9", distro="rocky", version="9", family="redhat", ssh_user="rocky",
            aws=AwsBase("Rocky-9-EC2-Base-9.*{arch}", "792107900819"),
            gcp=GcpBase("rocky-linux-9", "rocky-linux-cloud"),
            azure=AzureBase("resf", "rockylinux-x86_64", "9-base"),
            gcp_arm64=GcpBase("rocky-linux-9-arm64", "rocky-linux-cloud"),
            azure_arm64=AzureBase("resf", "rockylinux-aarch64", "9-base"),
            openstack_image="rockylinux-9",
            qemu_base="https://dl.rockylinux.org/pub/rocky/9/images/{arch}/Rocky-9-GenericCloud-Base.latest.{arch}.qcow2",
            qemu_checksums="CHECKSUM",
        ),
        OsInfo(
            id="flatcar", distro="flatcar", version="stable", family="flatcar", ssh_user="core",
            aws=AwsBase("Flatcar-stable-*-hvm", "075585003325"),
            gcp=GcpBase("flatcar-stable", "kinvolk-public"),
            azure=AzureBase("kinvolk", "flatcar-container-linux-free", "stable-gen2"),
            openstack_image="flatcar-stable",
            qemu_base="https://stable.release.flatcar-linux.net/{arch}-usr/current/flatcar_production_qemu_image.img",
            default_strategy="sysext",
        ),
    )
}
