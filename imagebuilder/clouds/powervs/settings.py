"""The settings of `clouds.powervs` (IBM Power Virtual Server) in the matrix, with their defaults. No
credentials here: the template reads the IBM Cloud API key from IBMCLOUD_API_KEY and the capture
bucket's HMAC keys from IBM_COS_ACCESS_KEY_ID and IBM_COS_SECRET_ACCESS_KEY (Packer's env())."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings, Variant


class PowervsSettings(CloudSettings):
    max_parallel: int = Field(2, ge=1)  # builds of this cloud at once (the workspace's quota)
    region: str = "us-south"  # the PowerVS workspace's region
    zone: str = "dal10"  # and zone
    service_instance_id: str  # the PowerVS workspace (service instance) the build VM runs in
    account_id: str | None = None  # the IBM Cloud account; None: the builder finds it from the API key
    key_pair_name: str  # the workspace's SSH key the build VM gets
    ssh_private_key_file: str  # its private half on this host
    capture_cos_bucket: str  # the Cloud Object Storage bucket the image is captured to, as an OVA
    capture_cos_region: str = "us-south"

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "region", "zone", "service_instance_id", "account_id",
                                   "key_pair_name", "ssh_private_key_file", "capture_cos_bucket",
                                   "capture_cos_region"})
    VARIANTS = {
        "dhcp": Variant("for a DHCP network (image-builder's powervs-<os>-dhcp): the vendor OVA set up for DHCP, "
                        "built on a DHCP network the builder creates", build={"dhcp_network": "true"},
                        own_base_image=True),
    }
