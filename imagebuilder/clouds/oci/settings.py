"""The settings of `clouds.oci` in the matrix, with their defaults. No credentials here: the
oracle-oci builder reads the OCI SDK's configuration file (~/.oci/config, its DEFAULT profile)."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class OciSettings(CloudSettings):
    max_parallel: int = Field(4, ge=1)  # builds of this cloud at once (the tenancy's instance limits)
    availability_domain: str  # where the build instance runs, e.g. "Uocm:US-ASHBURN-AD-1"
    compartment_ocid: str  # where the build instance and the image go
    subnet_ocid: str  # the build instance's subnet (Packer must reach it over SSH)
    shape: str = "VM.Standard2.1"  # a fixed shape: Packer 1.6.6's oracle-oci has no shape_config
    # The OCPUs of a flexible shape (image-builder's VM.Standard.E4.Flex with 1): the oracle plugin's
    # shape_config, which Packer 1.6.6 lacks; None: a fixed shape.
    ocpus: int | None = Field(None, ge=1)
    access_cfg_file: str = "~/.oci/config"  # the SDK configuration that holds the credentials
    access_cfg_file_account: str = "DEFAULT"  # its profile

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "availability_domain", "compartment_ocid", "subnet_ocid",
                                   "access_cfg_file", "access_cfg_file_account"})
