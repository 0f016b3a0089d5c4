"""The settings of `clouds.gcp` in the matrix, with their defaults."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class GcpSettings(CloudSettings):
    max_parallel: int = Field(10, ge=1)  # builds of this cloud at once (quotas)
    project_id: str
    zone: str = "us-central1-a"
    machine_type: str = "n2-standard-2"
    network: str | None = None
    subnetwork: str | None = None
    storage_locations: list[str] = Field(default_factory=lambda: ["us"])
    upload_bucket: str | None = None  # GCS bucket for importing locally built disks
    # GCS bucket for each image's SBOM and provenance (gs://<sbom_bucket>/<sbom_prefix><image name>.sbom.cdx.json);
    # none: not kept in GCP (`images sbom` says so)
    sbom_bucket: str | None = None
    sbom_prefix: str = "sbom/"

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "storage_locations", "upload_bucket", "sbom_bucket", "sbom_prefix"})
