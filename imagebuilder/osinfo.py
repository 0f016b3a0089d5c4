"""The operating systems imagebuilder knows: one entry each, with the vendor's stock image per
cloud and architecture. Adding an OS is one entry here plus its role data (ansible/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from imagebuilder.supplied import SUPPLIED

# The package method and role data an OS gets: apt (debian); dnf, or yum on Amazon Linux 2, with rpm
# (redhat: RHEL and its rebuilds, CentOS Stream, Amazon Linux, Oracle Linux); tdnf with rpm (tdnf: Photon
# OS and Azure Linux); none (flatcar: Kubernetes as a sysext).
Family = Literal["debian", "redhat", "tdnf", "flatcar"]
Strategy = Literal["bake", "sysext"]
Arch = Literal["amd64", "arm64", "ppc64le"]
ARCHES: tuple[Arch, ...] = ("amd64", "arm64", "ppc64le")  # our spelling; each reference below has the vendor's
# The arches most clouds publish images of (ppc64le: IBM Power Virtual Server's only, powervs).
AMD_ARM: tuple[Arch, ...] = ("amd64", "arm64")
DEFAULT_ARCH: Arch = "amd64"  # a cell of this arch has no arch in its id

# A base image reference as the cloud's lookup reads it (an AMI name filter and owner, a GCP
# family, a marketplace SKU, a Glance name, a qemu base URL). It goes into the build key as is.
Reference = Mapping[str, str]

# Where the stock qemu base images come from: `mirrors:` in the matrix may name another
# base URL for each (airgapped builds); the build key holds the upstream reference.
BASE_MIRRORS: dict[str, str] = {
    "debian": "http://deb.debian.org/debian",
    "debian_security": "http://deb.debian.org/debian-security",
    "ubuntu_cloud_images": "https://cloud-images.ubuntu.com",
    "rockylinux": "https://dl.rockylinux.org/pub/rocky",
    "flatcar": "https://stable.release.flatcar-linux.net",
    "almalinux": "https://repo.almalinux.org/almalinux",
    "centos_stream": "https://cloud.centos.org/centos",
}
# The qemu reference of a base imagebuilder builds itself (LocalBase kind "rootfs").
LOCAL_SOURCE = "local"


@dataclass(frozen=True)
class LocalBase:
    """How the local qemu target gets its first disk from the OS's qemu reference."""

    # "rootfs": a root file system built here from the distribution's archive
    # (imagebuilder.distributions.debian); "cloud-image": the vendor's disk image, downloaded and
    # checked against the vendor's checksum file beside it (imagebuilder.distributions.ubuntu);
    # "flatcar": Flatcar's qemu disk, checked against the sha512 of its `.DIGESTS` file, which the
    # Flatcar bake writes the Kubernetes sysext onto (imagebuilder.flatcar); "installer": no disk to
    # start from, the vendor's ISO (the qemu reference: iso_url, iso_checksum as pinned here) installed
    # by the Packer build with the OS's unattended install (imagebuilder.installer), as vSphere's is.
    kind: Literal["rootfs", "cloud-image", "flatcar", "installer"]
    # The checksum file beside a cloud image: GNU `SHA256SUMS`, BSD-style `CHECKSUM`, or Flatcar's
    # per-image `{image}.DIGESTS` ({image}: the image's file name).
    checksums: str = "SHA256SUMS"
    # The vendor's image boots under UEFI as well as BIOS: a GPT disk with an EFI system partition
    # holding shim and signed GRUB beside the BIOS boot partition (Ubuntu's cloud images: partitions
    # 14 and 15). Its efi variant cells are then the same build, boot-tested under OVMF
    # (local_target.efi_unbuilt); without it only the offline build's tree makes an efi disk.
    uefi: bool = False


# Ubuntu's cloud images (SHA256SUMS beside them) boot BIOS and UEFI alike.
UBUNTU_CLOUD_IMAGE = LocalBase("cloud-image", uefi=True)


@dataclass(frozen=True)
class Subscription:
    """A vendor subscription a build registers with (the node role) and leaves (sysprep). Its
    credentials come from the build's environment only, which Packer's Ansible provisioner inherits:
    never the matrix, the rendered files or the records. One complete set of `credentials` is needed."""

    key: str  # the roles' name of it (imagebuilder_subscription)
    name: str
    credentials: tuple[tuple[str, ...], ...]

    def missing(self, environ: Mapping[str, str]) -> str | None:
        """None when one set is complete in `environ`, else the sets to choose from, spelled out."""
        if any(all(environ.get(name) for name in names) for names in self.credentials):
            return None
        return ", or ".join(" and ".join(names) for names in self.credentials)


RHSM = Subscription("rhsm", "Red Hat Subscription Management",
                    (("RHSM_USER", "RHSM_PASS"), ("RHSM_ACTIVATION_KEY", "RHSM_ORG_ID")))


@dataclass(frozen=True)
class OsInfo:
    id: str
    distro: str  # os_distro as OpenStack and our metadata spell it
    version: str
    family: Family
    ssh_user: str
    # cloud -> arch -> the vendor's image there. A cloud or arch the vendor does not publish is
    # absent, and the planner refuses a cell that needs it.
    images: Mapping[str, Mapping[str, Reference]]
    # None: the local qemu target cannot boot this OS's image yet (the cell fails at build).
    local_base: LocalBase | None = None
    default_strategy: Strategy = "bake"
    # cloud -> variant -> arch -> reference, for a variant that starts from its own vendor image
    # (Azure's confidential VM SKUs); a variant not here starts from `images`.
    variant_images: Mapping[str, Mapping[str, Mapping[str, Reference]]] = field(default_factory=dict)
    subscription: Subscription | None = None  # registered for the build's packages, from the environment
    # cloud -> strategy where it is not default_strategy (Flatcar: baked where no stock image runs).
    strategies: Mapping[str, Strategy] = field(default_factory=dict)

    def strategy_on(self, cloud: str) -> Strategy:
        return self.strategies.get(cloud, self.default_strategy)

    def image(self, cloud: str, arch: str, variant: str | None = None) -> dict[str, Any] | None:
        """A copy of the reference of (cloud, arch[, variant]), or None where the vendor has none."""
        table = self.variant_images.get(cloud, {}).get(variant, {}) if variant else self.images.get(cloud, {})
        reference = table.get(arch)
        return dict(reference) if reference is not None else None

    def arches_on(self, cloud: str) -> tuple[str, ...]:
        return tuple(arch for arch in ARCHES if arch in self.images.get(cloud, {}))


UBUNTU_OWNER = "099720109477"  # Canonical's AWS account
UBUNTU_IMAGES = f"{BASE_MIRRORS['ubuntu_cloud_images']}/releases"
# The live-server installer ISOs of the clouds that install from one (vSphere, Proxmox), pinned by
# the vendor's SHA256SUMS; amd64 only, as Canonical publishes them on this site.
UBUNTU_RELEASES = "https://releases.ubuntu.com"
UBUNTU_2204_ISO = {"iso_url": f"{UBUNTU_RELEASES}/22.04.4/ubuntu-22.04.4-live-server-amd64.iso",
                   "iso_checksum": "sha256:45f873de9f8cb637345d6e66a583762730bbea30277ef7b32c9c3bd6700a32b2"}
UBUNTU_2404_ISO = {"iso_url": f"{UBUNTU_RELEASES}/24.04.4/ubuntu-24.04.4-live-server-amd64.iso",
                   "iso_checksum": "sha256:e907d92eeec9df64163a7e454cbc8d7755e8ddc7ed42f99dbc80c40f1a138433"}
# Rocky's minimal ISO (the installer; the packages come from the repositories, installer.py).
ROCKY_9_ISO = {"iso_url": "https://dl.rockylinux.org/vault/rocky/9.4/isos/x86_64/Rocky-9.4-x86_64-minimal.iso",
               "iso_checksum": "sha256:ee3ac97fdffab58652421941599902012179c37535aece76824673105169c4a2"}

# Outscale's Ubuntu 24.04 OMI (owner Outscale): Ubuntu's osc cells, and the system Flatcar's osc cell overwrites.
OSC_UBUNTU_2404 = {"image_name": "Ubuntu-24.04-2025-07-07"}
UBUNTU_2604_ISO = {"iso_url": f"{UBUNTU_RELEASES}/26.04.1/ubuntu-26.04.1-live-server-amd64.iso",
                   "iso_checksum": "sha256:cc8a95cde20f6ced61a322420de00f10cc3c90ced545daa46cb9c1a117f1d927"}
# The installer ISOs image-builder's OVA builds use (packer/ova/<os>.json), with the vendor's sums.
ALMALINUX_9_ISO = {"iso_url": "https://repo.almalinux.org/vault/9.4/isos/x86_64/AlmaLinux-9.4-x86_64-dvd.iso",
                   "iso_checksum": "sha256:34c4285d524605da6dbd76b0b475338f6ea0a28bb88929bf14b04db68f1e1620"}
PHOTON_4_ISO = {"iso_url": "https://packages.vmware.com/photon/4.0/GA/iso/photon-minimal-4.0-1526e30ba.iso",
                "iso_checksum": "sha1:7e834b8b152e12fd7556e4e8e0e26f6ab5bf2737"}
PHOTON_5_ISO = {"iso_url": "https://packages.vmware.com/photon/5.0/GA/iso/photon-minimal-5.0-dde71ec57.x86_64.iso",
                "iso_checksum": "sha512:85cddaa8da26c095cf55d3f22f0838ad5d9ae73aa476d0c5c8e54bfbfcb432de"
                                "af940733c2cb5af14d1e5b133da65c17f3f4e215bf381d5b8b411d548b66a463"}
# RHEL's KVM guest image and DVD ISO need a Customer Portal login: the user downloads them and names
# their URL and sha256 (supplied.py: the matrix's supplied_images, or the environment).
RHEL_KVM_IMAGE = {SUPPLIED: "kvm_image"}
RHEL_DVD_ISO = {SUPPLIED: "iso"}
AMAZON_OWNER = "amazon"  # the owner alias of Amazon's own AMIs
REDHAT_OWNER = "309956199498"  # Red Hat's AWS account (pay-as-you-go RHEL)
CENTOS_OWNER = "125523088429"  # the CentOS project's AWS account
ALMALINUX_OWNER = "764336703387"  # AlmaLinux OS Foundation's AWS account
ALMALINUX_IMAGES = f"{BASE_MIRRORS['almalinux']}/9/cloud"
CENTOS_STREAM_IMAGES = BASE_MIRRORS["centos_stream"]
# The IBM Cloud Object Storage bucket of the OVAs image-builder's PowerVS builds import (source_cos_*).
POWERVS_BUCKET, POWERVS_BUCKET_REGION = "power-oss-bucket", "us-south"
FLATCAR_STABLE = BASE_MIRRORS["flatcar"]
FLATCAR_ARCH = {"amd64": "amd64-usr", "arm64": "arm64-usr"}  # the release server's directories
# Where Flatcar runs as a stock image with the sysext merged at boot (the default) and where it is
# baked, the sysext in the image (imagebuilder/flatcar.py): the local outputs, from its qemu disk.
FLATCAR_BAKED = ("qemu", "raw", "ova", "kubevirt", "vsphere", "proxmox", "hcloud", "nutanix", "osc")
# Installed from Flatcar's ISO (vSphere, Proxmox: installer.flatcar_installer) or from Hetzner's rescue
# system with flatcar-install, each with the platform's OEM (Ignition's provider); the channel's current
# release. The ISO's checksum: Packer reads the image's line in the DIGESTS file beside it.
FLATCAR_CHANNEL = "stable"
FLATCAR_ISO = {"iso_url": f"{FLATCAR_STABLE}/amd64-usr/current/flatcar_production_iso_image.iso",
               "iso_checksum": f"file:{FLATCAR_STABLE}/amd64-usr/current/flatcar_production_iso_image.iso.DIGESTS",
               "channel": FLATCAR_CHANNEL}


def centos_stream(version: str) -> OsInfo:
    """CentOS Stream <version>: the project's GenericCloud qcow2 (CHECKSUM beside it), AMIs, GCP family."""
    return OsInfo(
        id=f"centos-{version}", distro="centos", version=f"{version}-stream", family="redhat", ssh_user="cloud-user",
        images={
            "qemu": {arch: {"source": f"{CENTOS_STREAM_IMAGES}/{version}-stream/{vendor}/images/"
                                      f"CentOS-Stream-GenericCloud-{version}-latest.{vendor}.qcow2"}
                     for arch, vendor in (("amd64", "x86_64"), ("arm64", "aarch64"))},
            "aws": {arch: {"name_filter": f"CentOS Stream {version} {vendor} *", "owner": CENTOS_OWNER}
                    for arch, vendor in (("amd64", "x86_64"), ("arm64", "aarch64"))},
            "gcp": {"amd64": {"family": f"centos-stream-{version}", "project": "centos-cloud"},
                    "arm64": {"family": f"centos-stream-{version}-arm64", "project": "centos-cloud"}},
            "openstack": {arch: {"image_name": f"centos-stream-{version}"} for arch in AMD_ARM},
            "hcloud": {arch: {"image": f"centos-stream-{version}"} for arch in AMD_ARM},
            # The OVA image-builder's PowerVS builds import from IBM Cloud Object Storage (packer/powervs).
            "powervs": {"ppc64le": powervs_ova(f"centos-streams-{version}.ova.gz")},
        },
        # CentOS Stream 10's OVA configured for a DHCP network (image-builder's centos-10-dhcp).
        variant_images=({"powervs": {"dhcp": {"ppc64le": powervs_ova(f"centos-streams-{version}-dhcp.ova.gz")}}}
                        if version == "10" else {}),
        local_base=LocalBase("cloud-image", checksums="CHECKSUM"),
    )


def powervs_ova(name: str) -> Reference:
    """An OVA in the public bucket image-builder's PowerVS builds start from."""
    return {"bucket": POWERVS_BUCKET, "object": name, "region": POWERVS_BUCKET_REGION}


def photon(version: str, iso: Reference) -> OsInfo:
    """Photon OS <version>: installed from its ISO (image-builder's OVA builds), the local outputs' too
    (no cloud image of ours)."""
    return OsInfo(id=f"photon-{version}", distro="photon", version=f"{version}.0", family="tdnf", ssh_user="photon",
                  images={"vsphere": {"amd64": iso}, "proxmox": {"amd64": iso}, "qemu": {"amd64": iso}},
                  local_base=LocalBase("installer"))


OPERATING_SYSTEMS: dict[str, OsInfo] = {
    info.id: info
    for info in (
        OsInfo(
            id="ubuntu-2204", distro="ubuntu", version="22.04", family="debian", ssh_user="ubuntu",
            images={
                "qemu": {
                    "amd64": {"source": f"{UBUNTU_IMAGES}/jammy/release/ubuntu-22.04-server-cloudimg-amd64.img"},
                    "arm64": {"source": f"{UBUNTU_IMAGES}/jammy/release/ubuntu-22.04-server-cloudimg-arm64.img"},
                },
                "aws": {
                    "amd64": {"name_filter": "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*",
                              "owner": UBUNTU_OWNER},
                    "arm64": {"name_filter": "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-arm64-server-*",
                              "owner": UBUNTU_OWNER},
                },
                "gcp": {
                    "amd64": {"family": "ubuntu-2204-lts", "project": "ubuntu-os-cloud"},
                    "arm64": {"family": "ubuntu-2204-lts-arm64", "project": "ubuntu-os-cloud"},
                },
                "azure": {
                    "amd64": {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts-gen2"},
                    "arm64": {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts-arm64"},
                },
                # Glance names are the site's: one name for every arch, as operators upload them.
                "openstack": {"amd64": {"image_name": "ubuntu-22.04"}, "arm64": {"image_name": "ubuntu-22.04"}},
                "vsphere": {"amd64": UBUNTU_2204_ISO},
                "proxmox": {"amd64": UBUNTU_2204_ISO},
                # Hetzner's system image names: one name for both arches (the server type decides).
                "hcloud": {"amd64": {"image": "ubuntu-22.04"}, "arm64": {"image": "ubuntu-22.04"}},
                # OCI's platform images by operating system and version; Outscale's own OMIs by name
                # (image-builder's); Scaleway's marketplace labels; DigitalOcean's slugs; Vultr's os ids;
                # Nutanix takes the vendor's cloud image (the qemu reference); Huawei Cloud's public image names.
                "oci": {"amd64": {"operating_system": "Canonical Ubuntu", "operating_system_version": "22.04"}},
                "osc": {"amd64": {"image_name": "Ubuntu-22.04-2025-10-15"}},
                "scaleway": {"amd64": {"image": "ubuntu_jammy"}, "arm64": {"image": "ubuntu_jammy"}},
                "digitalocean": {"amd64": {"image": "ubuntu-22-04-x64"}},
                "vultr": {"amd64": {"os_id": "1743"}},
                "nutanix": {"amd64": {"source": f"{UBUNTU_IMAGES}/jammy/release/ubuntu-22.04-server-cloudimg-amd64.img"}},
                "huaweicloud": {"amd64": {"image_filter_name": "Ubuntu 22.04 server 64bit"}},
            },
            variant_images={"azure": {
                "cvm": {"amd64": {"publisher": "Canonical", "offer": "0001-com-ubuntu-confidential-vm-jammy",
                                  "sku": "22_04-lts-cvm"}},
                # Generation 1 SKUs (image-builder's plain azure-sig targets).
                "gen1": {"amd64": {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"}},
            }},
            local_base=UBUNTU_CLOUD_IMAGE,
        ),
        OsInfo(
            id="ubuntu-2404", distro="ubuntu", version="24.04", family="debian", ssh_user="ubuntu",
            images={
                "qemu": {
                    "amd64": {"source": f"{UBUNTU_IMAGES}/noble/release/ubuntu-24.04-server-cloudimg-amd64.img"},
                    "arm64": {"source": f"{UBUNTU_IMAGES}/noble/release/ubuntu-24.04-server-cloudimg-arm64.img"},
                },
                "aws": {
                    "amd64": {"name_filter": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
                              "owner": UBUNTU_OWNER},
                    "arm64": {"name_filter": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-*",
                              "owner": UBUNTU_OWNER},
                },
                "gcp": {
                    "amd64": {"family": "ubuntu-2404-lts-amd64", "project": "ubuntu-os-cloud"},
                    "arm64": {"family": "ubuntu-2404-lts-arm64", "project": "ubuntu-os-cloud"},
                },
                "azure": {
                    "amd64": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server"},
                    "arm64": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server-arm64"},
                },
                "openstack": {"amd64": {"image_name": "ubuntu-24.04"}, "arm64": {"image_name": "ubuntu-24.04"}},
                "vsphere": {"amd64": UBUNTU_2404_ISO},
                "proxmox": {"amd64": UBUNTU_2404_ISO},
                "hcloud": {"amd64": {"image": "ubuntu-24.04"}, "arm64": {"image": "ubuntu-24.04"}},
                "oci": {"amd64": {"operating_system": "Canonical Ubuntu", "operating_system_version": "24.04"}},
                "osc": {"amd64": OSC_UBUNTU_2404},
                "scaleway": {"amd64": {"image": "ubuntu_noble"}, "arm64": {"image": "ubuntu_noble"}},
                "digitalocean": {"amd64": {"image": "ubuntu-24-04-x64"}},
                "vultr": {"amd64": {"os_id": "2284"}},
                "nutanix": {"amd64": {"source": f"{UBUNTU_IMAGES}/noble/release/ubuntu-24.04-server-cloudimg-amd64.img"}},
                # An Oxide silo's images are the operator's uploads, named as here.
                "oxide": {"amd64": {"image_name": "ubuntu-24.04"}},
            },
            variant_images={"azure": {
                "cvm": {"amd64": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "cvm"}},
                "gen1": {"amd64": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server-gen1"}},
            }},
            local_base=UBUNTU_CLOUD_IMAGE,
        ),
        OsInfo(
            id="debian-12", distro="debian", version="12", family="debian", ssh_user="debian",
            images={
                "qemu": {"amd64": {"source": LOCAL_SOURCE}, "arm64": {"source": LOCAL_SOURCE}},
                "aws": {
                    "amd64": {"name_filter": "debian-12-amd64-*", "owner": "136693071363"},
                    "arm64": {"name_filter": "debian-12-arm64-*", "owner": "136693071363"},
                },
                "gcp": {
                    "amd64": {"family": "debian-12", "project": "debian-cloud"},
                    "arm64": {"family": "debian-12-arm64", "project": "debian-cloud"},
                },
                "azure": {
                    "amd64": {"publisher": "Debian", "offer": "debian-12", "sku": "12-gen2"},
                    "arm64": {"publisher": "Debian", "offer": "debian-12", "sku": "12-arm64"},
                },
                "openstack": {"amd64": {"image_name": "debian-12"}, "arm64": {"image_name": "debian-12"}},
                "hcloud": {"amd64": {"image": "debian-12"}, "arm64": {"image": "debian-12"}},
                "digitalocean": {"amd64": {"image": "debian-12-x64"}},
            },
            local_base=LocalBase("rootfs"),
        ),
        OsInfo(
            id="rockylinux-9", distro="rocky", version="9", family="redhat", ssh_user="rocky",
            images={
                "qemu": {
                    "amd64": {"source": "https://dl.rockylinux.org/pub/rocky/9/images/x86_64/"
                                        "Rocky-9-GenericCloud-Base.latest.x86_64.qcow2"},
                    "arm64": {"source": "https://dl.rockylinux.org/pub/rocky/9/images/aarch64/"
                                        "Rocky-9-GenericCloud-Base.latest.aarch64.qcow2"},
                },
                "aws": {
                    "amd64": {"name_filter": "Rocky-9-EC2-Base-9.*x86_64", "owner": "792107900819"},
                    "arm64": {"name_filter": "Rocky-9-EC2-Base-9.*aarch64", "owner": "792107900819"},
                },
                "gcp": {
                    "amd64": {"family": "rocky-linux-9", "project": "rocky-linux-cloud"},
                    "arm64": {"family": "rocky-linux-9-arm64", "project": "rocky-linux-cloud"},
                },
                "azure": {
                    "amd64": {"publisher": "resf", "offer": "rockylinux-x86_64", "sku": "9-base"},
                    "arm64": {"publisher": "resf", "offer": "rockylinux-aarch64", "sku": "9-base"},
                },
                "openstack": {"amd64": {"image_name": "rockylinux-9"}, "arm64": {"image_name": "rockylinux-9"}},
                "vsphere": {"amd64": ROCKY_9_ISO},
                "proxmox": {"amd64": ROCKY_9_ISO},
                "hcloud": {"amd64": {"image": "rocky-9"}, "arm64": {"image": "rocky-9"}},
                "scaleway": {"amd64": {"image": "rockylinux_9"}},
                "digitalocean": {"amd64": {"image": "rockylinux-9-x64"}},
                "nutanix": {"amd64": {"source": "https://dl.rockylinux.org/pub/rocky/9/images/x86_64/"
                                                "Rocky-9-GenericCloud-Base.latest.x86_64.qcow2"}},
            },
            local_base=LocalBase("cloud-image", checksums="CHECKSUM"),
        ),
        OsInfo(
            id="flatcar", distro="flatcar", version="stable", family="flatcar", ssh_user="core",
            images={
                "qemu": {arch: {"source": f"{FLATCAR_STABLE}/{vendor}/current/flatcar_production_qemu_image.img"}
                         for arch, vendor in FLATCAR_ARCH.items()},
                # Kinvolk names the arm64 AMIs Flatcar-stable-<version>-arm64-hvm. The amd64 filter is the one
                # of before the table (it matches those too; amd64 cells run the stock AMI, nothing resolves it).
                "aws": {
                    "amd64": {"name_filter": "Flatcar-stable-*-hvm", "owner": "075585003325"},
                    "arm64": {"name_filter": "Flatcar-stable-*-arm64-hvm", "owner": "075585003325"},
                },
                "gcp": {"amd64": {"family": "flatcar-stable", "project": "kinvolk-public"}},
                "azure": {"amd64": {"publisher": "kinvolk", "offer": "flatcar-container-linux-free",
                                    "sku": "stable-gen2"}},
                "openstack": {"amd64": {"image_name": "flatcar-stable"}, "arm64": {"image_name": "flatcar-stable"}},
                "vsphere": {"amd64": {**FLATCAR_ISO, "oem": "vmware_raw"}},
                "proxmox": {"amd64": {**FLATCAR_ISO, "oem": "proxmoxve"}},
                # The server's own image is overwritten from the rescue system (hcloud's rescue).
                "hcloud": {arch: {"image": "debian-12", "rescue": "linux64", "oem": "hetzner", "channel": FLATCAR_CHANNEL}
                           for arch in FLATCAR_ARCH},
                # Flatcar's OpenStack image reads Ignition from the config drive Nutanix gives the VM.
                "nutanix": {"amd64": {"source": f"{FLATCAR_STABLE}/amd64-usr/current/"
                                                "flatcar_production_openstack_image.img"}},
                # Outscale's Ubuntu VM writes Flatcar's generic image over its own root disk (the VM's virtio
                # disk) and reboots into it, as image-builder's build-osc-flatcar (imagebuilder/flatcar.py).
                "osc": {"amd64": {**OSC_UBUNTU_2404, "root_disk": "/dev/vda",
                                  "source": f"{FLATCAR_STABLE}/amd64-usr/current/flatcar_production_image.bin.bz2"}},
            },
            variant_images={"azure": {"gen1": {"amd64": {
                "publisher": "kinvolk", "offer": "flatcar-container-linux-free", "sku": "stable"}}}},
            default_strategy="sysext",
            local_base=LocalBase("flatcar", checksums="{image}.DIGESTS"),
            strategies={cloud: "bake" for cloud in FLATCAR_BAKED},
        ),
        OsInfo(
            id="ubuntu-2604", distro="ubuntu", version="26.04", family="debian", ssh_user="ubuntu",
            images={
                "qemu": {arch: {"source": f"{UBUNTU_IMAGES}/resolute/release/ubuntu-26.04-server-cloudimg-{arch}.img"}
                         for arch in AMD_ARM},
                "aws": {arch: {"name_filter": f"ubuntu/images/*ubuntu-resolute-26.04-{arch}-server-*",
                               "owner": UBUNTU_OWNER} for arch in AMD_ARM},
                "gcp": {arch: {"family": f"ubuntu-2604-lts-{arch}", "project": "ubuntu-os-cloud"} for arch in AMD_ARM},
                "azure": {
                    "amd64": {"publisher": "Canonical", "offer": "ubuntu-26_04-lts", "sku": "server"},
                    "arm64": {"publisher": "Canonical", "offer": "ubuntu-26_04-lts", "sku": "server-arm64"},
                },
                "openstack": {arch: {"image_name": "ubuntu-26.04"} for arch in AMD_ARM},
                "vsphere": {"amd64": UBUNTU_2604_ISO},
                "proxmox": {"amd64": UBUNTU_2604_ISO},
                "hcloud": {arch: {"image": "ubuntu-26.04"} for arch in AMD_ARM},
                "osc": {"amd64": {"image_name": "Ubuntu-26.04-2026-06-17"}},
                "scaleway": {arch: {"image": "ubuntu_resolute"} for arch in AMD_ARM},
                "digitalocean": {"amd64": {"image": "ubuntu-26-04-x64"}},
                "vultr": {"amd64": {"os_id": "2760"}},
                "nutanix": {"amd64": {"source": f"{UBUNTU_IMAGES}/resolute/release/ubuntu-26.04-server-cloudimg-amd64.img"}},
            },
            variant_images={"azure": {
                "cvm": {"amd64": {"publisher": "Canonical", "offer": "ubuntu-26_04-lts", "sku": "cvm"}},
                "gen1": {"amd64": {"publisher": "Canonical", "offer": "ubuntu-26_04-lts", "sku": "server-gen1"}},
            }},
            local_base=UBUNTU_CLOUD_IMAGE,
        ),
        OsInfo(
            # RHEL: pay-as-you-go cloud images; a build registers with Red Hat's subscription
            # service from the environment only (RHSM_* variables, build.py). The local outputs and
            # Nutanix start from Red Hat's KVM guest image, vSphere and Proxmox install from the DVD:
            # both the user's download (supplied.py).
            id="rhel-9", distro="rhel", version="9", family="redhat", ssh_user="ec2-user",
            images={
                "qemu": {"amd64": RHEL_KVM_IMAGE},
                "nutanix": {"amd64": RHEL_KVM_IMAGE},
                "vsphere": {"amd64": RHEL_DVD_ISO},
                "proxmox": {"amd64": RHEL_DVD_ISO},
                "aws": {arch: {"name_filter": f"RHEL-9.*_HVM-*-{vendor}-*", "owner": REDHAT_OWNER}
                        for arch, vendor in (("amd64", "x86_64"), ("arm64", "arm64"))},
                "gcp": {"amd64": {"family": "rhel-9", "project": "rhel-cloud"},
                        "arm64": {"family": "rhel-9-arm64", "project": "rhel-cloud"}},
                "azure": {"amd64": {"publisher": "RedHat", "offer": "RHEL", "sku": "9-lvm-gen2"}},
                "openstack": {arch: {"image_name": "rhel-9"} for arch in AMD_ARM},
            },
            # Red Hat's KVM guest image boots BIOS and UEFI alike (a BIOS boot and an EFI system partition).
            local_base=LocalBase("cloud-image", uefi=True),
            subscription=RHSM,
        ),
        OsInfo(
            id="almalinux-9", distro="almalinux", version="9", family="redhat", ssh_user="almalinux",
            images={
                "qemu": {arch: {"source": f"{ALMALINUX_IMAGES}/{vendor}/images/"
                                          f"AlmaLinux-9-GenericCloud-latest.{vendor}.qcow2"}
                         for arch, vendor in (("amd64", "x86_64"), ("arm64", "aarch64"))},
                "aws": {arch: {"name_filter": f"AlmaLinux OS 9.* {vendor}", "owner": ALMALINUX_OWNER}
                        for arch, vendor in (("amd64", "x86_64"), ("arm64", "aarch64"))},
                "gcp": {"amd64": {"family": "almalinux-9", "project": "almalinux-cloud"},
                        "arm64": {"family": "almalinux-9-arm64", "project": "almalinux-cloud"}},
                "azure": {"amd64": {"publisher": "almalinux", "offer": "almalinux-x86_64", "sku": "9-gen2"},
                          "arm64": {"publisher": "almalinux", "offer": "almalinux-arm", "sku": "9-arm64-gen2"}},
                "openstack": {arch: {"image_name": "almalinux-9"} for arch in AMD_ARM},
                "vsphere": {"amd64": ALMALINUX_9_ISO},
                "proxmox": {"amd64": ALMALINUX_9_ISO},
                "hcloud": {arch: {"image": "alma-9"} for arch in AMD_ARM},
            },
            local_base=LocalBase("cloud-image", checksums="CHECKSUM"),
        ),
        centos_stream("9"),
        centos_stream("10"),
        photon("4", PHOTON_4_ISO),
        photon("5", PHOTON_5_ISO),
        OsInfo(
            id="amazon-2023", distro="amzn", version="2023", family="redhat", ssh_user="ec2-user",
            images={"aws": {arch: {"name_filter": f"al2023-ami-minimal-2023.*-kernel-6.1-{vendor}",
                                   "owner": AMAZON_OWNER}
                            for arch, vendor in (("amd64", "x86_64"), ("arm64", "arm64"))}},
        ),
        OsInfo(
            # Amazon Linux 2: yum, not dnf (the roles' package tasks use the package manager the
            # target has).
            id="amazon-2", distro="amzn", version="2", family="redhat", ssh_user="ec2-user",
            images={"aws": {arch: {"name_filter": f"amzn2-ami-hvm-2.0.*-{vendor}-gp2", "owner": AMAZON_OWNER}
                            for arch, vendor in (("amd64", "x86_64"), ("arm64", "arm64"))}},
        ),
        OsInfo(
            id="azurelinux-3", distro="azurelinux", version="3.0", family="tdnf", ssh_user="azureuser",
            images={"azure": {
                "amd64": {"publisher": "MicrosoftCBLMariner", "offer": "azure-linux-3", "sku": "azure-linux-3-gen2"},
            }},
            variant_images={"azure": {"gen1": {"amd64": {
                "publisher": "MicrosoftCBLMariner", "offer": "azure-linux-3", "sku": "azure-linux-3"}}}},
        ),
        OsInfo(
            id="oracle-linux-9", distro="ol", version="9", family="redhat", ssh_user="opc",
            images={
                # Oracle's KVM template (its own sha256 is published on the page, not in a sums file).
                "openstack": {arch: {"image_name": "oracle-linux-9"} for arch in AMD_ARM},
                # OCI's platform image (image-builder's oci-oracle-linux-9).
                "oci": {"amd64": {"operating_system": "Oracle Linux", "operating_system_version": "9"}},
            },
        ),
    )
}
