"""The settings of `clouds.vsphere` in the matrix, with their defaults. The vCenter credentials are
never here: the template reads VSPHERE_USERNAME and VSPHERE_PASSWORD with Packer's env()."""

from __future__ import annotations

from pydantic import Field, model_validator

from imagebuilder.models import CloudSettings, Variant


# What each flavour is ("": the default cells).
FLAVOURS = {
    "": "the node image installed from the OS's ISO (vsphere-iso)",
    "clone": "the node image built on a VM template in vCenter (vsphere-clone) instead of from the ISO",
    "base": "the OS alone installed from its ISO, no Kubernetes: a VM template for the clone variant",
}


FIRMWARES = ("bios", "efi")


def variant_name(flavour: str, firmware: str) -> str:
    """"clone", "clone-efi", "efi"; "" for the default cell (BIOS, from the ISO)."""
    return "-".join(part for part in (flavour, "efi" if firmware == "efi" else "") if part)


def flavour_of(variant: str | None) -> str:
    """The flavour of a variant name ("clone-efi" -> "clone"; "efi" and None -> "")."""
    first = (variant or "").split("-")[0]
    return first if first and first in FLAVOURS else ""


class VsphereSettings(CloudSettings):
    max_parallel: int = Field(2, ge=1)  # builds of this cloud at once
    vcenter_server: str  # host name of the vCenter Server
    insecure_connection: bool = False  # true only for a vCenter with a self-signed certificate
    datacenter: str
    cluster: str | None = None  # where the build VM runs: a cluster, or a host
    host: str | None = None
    resource_pool: str | None = None
    datastore: str
    folder: str = "imagebuilder"  # the VM folder the templates go to
    network: str = "VM Network"  # the port group the build VM's NIC joins
    cpus: int = Field(2, ge=1)
    memory_mb: int = Field(4096, ge=1024)
    disk_gib: int = Field(20, ge=10)
    # The content library the template is published to (None: a VM template in `folder` only), as an
    # OVF template (ovf: true) or a VM template (false); see README "vSphere content library".
    content_library: str | None = None
    content_library_ovf: bool = True
    # The clone variants: the VM template each OS starts from (default "<os>-base", "<os>-base-efi" for
    # clone-efi: the base variants' templates renamed), and whether the build VM is a linked clone.
    clone_from: dict[str, str] = Field(default_factory=dict)
    linked_clone: bool = False
    # The base and clone variants: the path of an SSH private key on the build host (a file, not the
    # key). The base variant authorizes its `.pub` for the build user it keeps; clone builds log in with it.
    template_ssh_key: str | None = None

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "vcenter_server", "insecure_connection", "datacenter", "cluster",
                                   "host", "resource_pool", "datastore", "folder", "network", "content_library",
                                   "content_library_ovf", "template_ssh_key"})
    # image-builder's node-ova-vsphere-clone-* and node-ova-vsphere-base-* flavours; the default cells
    # are its node-ova-vsphere-* (vsphere-iso, from the OS's installer ISO). Each flavour also boots
    # UEFI as `<flavour>-efi` (`efi` for the default one): image-builder's `-efi` targets, vsphere-iso's
    # `firmware = "efi"`; clone-efi clones base-efi's template.
    VARIANTS = {variant_name(flavour, firmware): Variant(
                    summary + (" with UEFI firmware" if firmware == "efi" else ""),
                    build={"firmware": "efi"} if firmware == "efi" else {})
                for flavour, summary in FLAVOURS.items() for firmware in FIRMWARES
                if variant_name(flavour, firmware)}

    @model_validator(mode="after")
    def _templates_need_a_key(self) -> VsphereSettings:
        needing = sorted({flavour_of(name) for name in self.variants} - {""})
        if needing and not self.template_ssh_key:
            raise ValueError(f"the {' and '.join(needing)} variant{'s need' if len(needing) > 1 else ' needs'} "
                             "template_ssh_key | fix: set "
                             "clouds.vsphere.template_ssh_key to the path of an SSH private key on the build host "
                             "(its .pub beside it)")
        return self

    @model_validator(mode="after")
    def _one_place_to_run(self) -> VsphereSettings:
        if (self.cluster is None) == (self.host is None):
            raise ValueError("name where the build VM runs: either cluster or host | fix: set clouds.vsphere.cluster "
                             "(or host, for a standalone ESXi host under vCenter)")
        return self
