"""The settings of `clouds.aws` in the matrix, with their defaults."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class AwsSettings(CloudSettings):
    max_parallel: int = Field(10, ge=1)  # builds of this cloud at once (quotas)
    regions: list[str] = Field(default_factory=lambda: ["us-east-1"], min_length=1)
    instance_type: str = "t3.large"
    instance_type_arm64: str = "t4g.large"  # the build instance of arm64 cells (Graviton)
    volume_size_gb: int = Field(20, ge=8)
    subnet_id: str | None = None
    ami_users: list[str] = Field(default_factory=list)  # accounts to share with
    ami_groups: list[str] = Field(default_factory=list)  # ["all"] makes it public
    ssm_parameter_prefix: str | None = None
    # S3 bucket for each image's SBOM and provenance (s3://<sbom_bucket>/<sbom_prefix><AMI name>.sbom.cdx.json);
    # none: not kept in AWS (`images sbom` says so)
    sbom_bucket: str | None = None
    sbom_prefix: str = "sbom/"

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "regions", "ami_users", "ami_groups", "ssm_parameter_prefix",
                                   "sbom_bucket", "sbom_prefix"})
