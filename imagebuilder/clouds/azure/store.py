"""Azure: publish and catalogue images in an Azure Compute Gallery.

One image definition per (os, minor) — ``capi-<os>-k8s-<minor>`` as the planner names it,
``-arm64`` appended for arm64 since a definition has one architecture — and one image version
per build, ``<major>.<minor>.<build minute>`` (imagebuilder.clouds.azure.versions), tagged with the metadata (Azure
tags hold the values whole), replicated to the configured target regions with the configured
replica count. Retention uses the gallery's own levers: ``excludeFromLatest`` and
``endOfLifeDate`` (``deprecate``) and a plain delete.

Two ways in:

* an ``azure-arm`` Packer build: its managed image (the artifact id) is published as a
  version, or the version Packer put in the gallery is found (by build key tag, or by its
  source) and completed with tags and target regions;
* a locally built disk (qemu): converted to a fixed VHD (whole MiB, as Azure requires),
  uploaded as a page blob with azure-storage-blob (all-zero pages are skipped), and made a
  version from ``osDiskImage.source``; the blob is removed once the version holds it.

Every write is a PUT/PATCH of a named resource, so retrying one never duplicates a version;
a version of this build that exists already is found first. Long-running operations are
polled by the SDK (ARM ``Azure-AsyncOperation``); one that fails becomes a one-line
CloudError. 429s and 5xx answers are retried by the SDK's retry policy a bounded number of
times, honouring Retry-After.

Credentials: ``DefaultAzureCredential`` (environment, managed identity, Azure CLI) unless a
caller passes one; the subscription from ``AZURE_SUBSCRIPTION_ID``. Tokens are never logged
and are sent only over https (or to a loopback test endpoint).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute import models as m
from azure.mgmt.compute._version import VERSION as SDK_VERSION

from imagebuilder.artifact import Artifact
from imagebuilder.clouds.azure.versions import gallery_version
from imagebuilder.clouds.disks import aligned_raw, run_tool
from imagebuilder.clouds import CloudError, ImageFilter, ImageRecord, ImageStore, sort_newest_first, utcnow
from imagebuilder.clouds.azure.settings import AzureSettings, hyper_v_generation
from imagebuilder.clouds.azure.naming import image_definition as azure_image_definition
from imagebuilder.metadata import ImageMetadata, tag_key
from imagebuilder.textline import one_line
from imagebuilder.timeparse import EPOCH, as_utc, parse_time

log = logging.getLogger(__name__)
# azure.identity logs each failed credential chain as a multi-line warning; our CloudError says it in one line.
logging.getLogger("azure.identity").addHandler(logging.NullHandler())
T = TypeVar("T")

MIN_SDK_MAJOR = 39  # models with nested `properties` and mapping constructors
if int(SDK_VERSION.split(".")[0]) < MIN_SDK_MAJOR:
    raise ImportError(f"azure-mgmt-compute>={MIN_SDK_MAJOR} is needed, {SDK_VERSION} is installed")

SUBSCRIPTION_ENV = "AZURE_SUBSCRIPTION_ID"
ARM_SCOPE = "https://management.azure.com/.default"
BUILD_KEY_TAG = tag_key("build_key")
# When retention deprecated the version: endOfLifeDate is the end of its grace, not its start.
DEPRECATED_TAG = "imagebuilder-deprecated-at"
# Azure takes only an endOfLifeDate in the future; one closer than this is moved out to it, so
# the request cannot arrive after the date it carries.
MIN_END_OF_LIFE_AHEAD = timedelta(hours=1)
PUBLISHER = "imagebuilder"
STORAGE_ACCOUNT_TYPE = "Standard_LRS"
UPLOAD_CONTAINER = "imagebuilder"
ARCHITECTURES = {"amd64": "x64", "arm64": "Arm64"}
STATES = {"succeeded": "available", "creating": "pending", "updating": "available", "failed": "failed",
          "deleting": "deleting", "migrating": "available"}
QUOTA_CODES = frozenset({"QuotaExceeded", "OperationNotAllowed", "GalleryImageVersionQuotaExceeded",
                         "ResourceQuotaExceeded"})
MIB = 1 << 20
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def definition_name(metadata: ImageMetadata) -> str:
    """The planner's definition name for the image's (os, minor, arch, variant)."""
    return azure_image_definition(metadata.os, metadata.kubernetes_minor, metadata.arch, metadata.variant or None)


# The definition feature that lets VMs of a security type launch its versions ("az sig
# image-definition create --features SecurityType=..."): the variants' security_type (config.py).
SECURITY_TYPE_FEATURES = {"ConfidentialVM": "ConfidentialVmSupported", "TrustedLaunch": "TrustedLaunchSupported"}


def security_features(metadata: ImageMetadata) -> list[m.GalleryImageFeature]:
    variant = AzureSettings.VARIANTS.get(metadata.variant)
    security_type = variant.build.get("security_type") if variant else None
    if security_type is None:
        return []
    return [m.GalleryImageFeature(name="SecurityType", value=SECURITY_TYPE_FEATURES[security_type])]


def version_name(metadata: ImageMetadata) -> str:
    """The build's gallery version (imagebuilder.clouds.azure.versions); an image without a recorded
    build time (made before the metadata had one) takes the time it is published."""
    return gallery_version(metadata.kubernetes_minor, metadata.built_at() or utcnow())


class LoopbackBearerPolicy(BearerTokenCredentialPolicy):
    """The ARM bearer policy, allowed over plain http to a loopback address only (a local test endpoint)."""

    def on_request(self, request: Any) -> None:
        if urlsplit(request.http_request.url).hostname in LOOPBACK:
            request.context["enforce_https"] = False
        super().on_request(request)


class AzureImageStore(ImageStore):
    cloud = "azure"
    attestation_setting = "sbom_container"
    attestation_scheme = "https"

    def __init__(self, settings: AzureSettings, *, subscription_id: str | None = None, credential: Any = None,
                 base_url: str | None = None, storage_account: str | None = None,
                 storage_resource_group: str | None = None, blob_endpoint: str | None = None,
                 blob_credential: Any = None, container: str = UPLOAD_CONTAINER, polling_interval: float = 15.0,
                 retry_total: int = 6, retry_backoff: float = 0.8, operation_timeout: float = 3600.0,
                 keep_upload: bool = False, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.subscription_id = subscription_id or os.environ.get(SUBSCRIPTION_ENV, "")
        self.base_url = base_url
        self.storage_account = storage_account or getattr(settings, "storage_account", None)
        self.storage_resource_group = storage_resource_group or settings.resource_group
        self.blob_endpoint = blob_endpoint
        self.container = container
        self.polling_interval = polling_interval
        self.retry_total = retry_total
        self.retry_backoff = retry_backoff
        self.operation_timeout = operation_timeout
        self.keep_upload = keep_upload
        self.sleep = sleep
        self._credential = credential
        self._blob_credential = blob_credential
        self._client: ComputeManagementClient | None = None

    # -- clients and calls -------------------------------------------------------------

    @property
    def credential(self) -> Any:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    @property
    def client(self) -> ComputeManagementClient:
        if self._client is None:
            if not self.subscription_id:
                raise CloudError(f"azure: no subscription | fix: set {SUBSCRIPTION_ENV}")
            kwargs: dict[str, Any] = {"polling_interval": self.polling_interval, "retry_total": self.retry_total,
                                      "retry_backoff_factor": self.retry_backoff}
            if self.base_url:
                kwargs["base_url"] = self.base_url
                parts = urlsplit(self.base_url)
                if parts.scheme == "http":
                    if parts.hostname not in LOOPBACK:
                        raise CloudError(f"azure: {self.base_url} is plain http | fix: use https; tokens are "
                                         "sent over plain http to a loopback address only")
                    kwargs["authentication_policy"] = LoopbackBearerPolicy(self.credential, ARM_SCOPE)
            self._client = ComputeManagementClient(self.credential, self.subscription_id, **kwargs)
        return self._client

    def call(self, operation: str, subject: str, run: Callable[[], T]) -> T:
        """run() (the SDK retries throttling itself); failures become one-line CloudErrors."""
        try:
            return run()
        except ResourceNotFoundError as exc:
            raise Missing(azure_error(exc, operation, subject)) from None
        except HttpResponseError as exc:
            raise azure_error(exc, operation, subject) from None
        except ClientAuthenticationError as exc:
            raise CloudError(f"azure: {operation} {subject}: authentication failed ({one_line(exc.message)[:200]}) "
                             "| fix: set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET or run 'az login'"
                             ) from None
        except (ServiceRequestError, AzureError) as exc:
            raise CloudError(f"azure: {operation} {subject} failed: {one_line(str(exc))[:300]} "
                             "| fix: check the network and the endpoint") from None

    def lro(self, operation: str, subject: str, start: Callable[[], Any]) -> Any:
        """Start a long-running operation and wait for its result, bounded by operation_timeout."""
        def run() -> Any:
            poller = start()
            result = poller.result(timeout=self.operation_timeout)
            if not poller.done():
                raise CloudError(f"azure: {operation} {subject} still running after {self.operation_timeout:.0f}s "
                                 "| fix: run publish again later; it finds the version instead of making another")
            return result

        return self.call(operation, subject, run)

    @property
    def rg(self) -> str:
        return self.settings.resource_group

    @property
    def gallery(self) -> str:
        return self.settings.gallery

    # -- gallery and definitions -----------------------------------------------------------

    def check_access(self) -> None:
        """A token, then the gallery: a missing gallery is fine (publish creates it), a refused token is not."""
        client = self.client  # no subscription: its own error first
        try:
            self.credential.get_token(ARM_SCOPE)
        except ClientAuthenticationError as exc:
            reason = one_line(str(exc.message).splitlines()[0])[:200]
            raise CloudError(f"azure: no working credentials ({reason}) | fix: set AZURE_CLIENT_ID/AZURE_TENANT_ID/"
                             "AZURE_CLIENT_SECRET (or use a managed identity) or run 'az login'") from None
        try:
            self.call("get gallery", self.gallery, lambda: client.galleries.get(self.rg, self.gallery))
        except Missing:
            return

    def ensure_gallery(self) -> None:
        try:
            self.call("get gallery", self.gallery, lambda: self.client.galleries.get(self.rg, self.gallery))
        except Missing:
            log.info("azure: creating gallery %s in %s", self.gallery, self.rg)
            gallery = m.Gallery(location=self.settings.location, properties=m.GalleryProperties(
                description="Kubernetes node images built by imagebuilder"))
            self.lro("create gallery", self.gallery, lambda: self.client.galleries.begin_create_or_update(
                self.rg, self.gallery, gallery))

    def ensure_definition(self, metadata: ImageMetadata) -> str:
        name = definition_name(metadata)
        try:
            self.call("get image definition", name, lambda: self.client.gallery_images.get(
                self.rg, self.gallery, name))
            return name
        except Missing:
            pass
        log.info("azure: creating image definition %s", name)
        definition = m.GalleryImage(
            location=self.settings.location,
            tags={tag_key("os"): metadata.os, tag_key("kubernetes_minor"): metadata.kubernetes_minor,
                  tag_key("arch"): metadata.arch},
            properties=m.GalleryImageProperties(
                os_type="Linux", os_state="Generalized", hyper_v_generation=hyper_v_generation(metadata.variant or None),
                architecture=ARCHITECTURES.get(metadata.arch, "x64"),
                description=f"Kubernetes {metadata.kubernetes_minor} nodes on {metadata.os} ({metadata.arch})",
                # The identifier is unique in a gallery: a variant's definition has its own SKU.
                identifier=m.GalleryImageIdentifier(publisher=PUBLISHER, offer=f"capi-{metadata.os}", sku="-".join(
                    ["k8s", metadata.kubernetes_minor, metadata.arch, *([metadata.variant] if metadata.variant else [])])),
                features=security_features(metadata) or None))
        self.lro("create image definition", name, lambda: self.client.gallery_images.begin_create_or_update(
            self.rg, self.gallery, name, definition))
        return name

    def definitions(self) -> list[str]:
        try:
            return self.call("list image definitions", self.gallery, lambda: [
                str(d.name) for d in self.client.gallery_images.list_by_gallery(self.rg, self.gallery)])
        except Missing:
            return []

    def versions(self, definition: str) -> list[m.GalleryImageVersion]:
        try:
            return self.call("list versions", definition, lambda: list(
                self.client.gallery_image_versions.list_by_gallery_image(self.rg, self.gallery, definition)))
        except Missing:
            return []

    def get_version(self, definition: str, version: str) -> m.GalleryImageVersion | None:
        try:
            return self.call("get version", f"{definition}/{version}", lambda: self.client.gallery_image_versions.get(
                self.rg, self.gallery, definition, version))
        except Missing:
            return None

    # -- publish ---------------------------------------------------------------------------

    def target_regions(self) -> list[str]:
        """The gallery's region first (Azure keeps a replica where the version is made), then the configured ones."""
        return list(dict.fromkeys([self.settings.location, *self.settings.target_regions]))

    def publishing_profile(self, regions: Sequence[str]) -> m.GalleryImageVersionPublishingProfile:
        count = self.settings.replica_count
        return m.GalleryImageVersionPublishingProfile(
            target_regions=[m.TargetRegion(name=region, regional_replica_count=count,
                                           storage_account_type=STORAGE_ACCOUNT_TYPE) for region in regions],
            replica_count=count, exclude_from_latest=False)

    def publish(self, artifact: Artifact) -> dict[str, str]:
        if artifact.cloud not in ("azure", "qemu", "local"):
            raise CloudError(f"{artifact.cell_id}: a {artifact.cloud} artifact cannot be published to Azure "
                             "| fix: publish an azure-arm or a qemu build")
        metadata = artifact.metadata
        self.ensure_gallery()
        definition = self.ensure_definition(metadata)
        managed_image = artifact.ids.get("default", "") if artifact.cloud == "azure" else ""
        version = self.find_version(definition, artifact.build_key, managed_image)
        if version is not None and _state(version) == "failed":
            log.info("azure: removing failed version %s/%s before publishing again", definition, version.name)
            self.delete(record_of(version, self.settings.location))
            version = None
        if version is None:
            if artifact.cloud == "azure":
                if not managed_image.lower().startswith("/subscriptions/"):
                    raise CloudError(f"{artifact.cell_id}: the artifact names no managed image "
                                     f"(ids: {artifact.ids or 'none'}) "
                                     "| fix: publish the manifest of an azure-arm build")
                storage = m.GalleryImageVersionStorageProfile(source=m.GalleryArtifactVersionFullSource(
                    id=managed_image))
                version = self.create_version(definition, metadata, storage)
            else:
                version = self.create_from_disk(definition, artifact)
        record = self.complete(definition, version, metadata)
        self.store_attestations(replace(artifact, image_name=record.name), self.settings.location)
        self.mark_published([record])
        return {region: record.image_id for region in record.extra["target_regions"]}

    # -- the SBOM and provenance: block blobs in sbom_container of the storage account ---------

    def attestation_bucket(self) -> str | None:
        return self.settings.sbom_container if self.storage_account else None

    def attestation_settings(self) -> str:
        return f"clouds.azure.{self.attestation_setting} (with clouds.azure.storage_account)"

    def attestation_url(self, image_name: str, kind: str) -> str:
        account = (self.blob_endpoint or f"https://{self.storage_account or '<storage_account>'}.blob.core.windows.net")
        return f"{account}/{self.settings.sbom_container or '<sbom_container>'}/{self.attestation_key(image_name, kind)}"

    def _put_object(self, key: str, data: bytes) -> None:
        from azure.storage.blob import ContentSettings

        container = self._blob_service().get_container_client(str(self.settings.sbom_container))
        if not self.call("get container", container.container_name, container.exists):
            self.call("create container", container.container_name, container.create_container)
        blob = container.get_blob_client(key)
        self.call("upload blob", key, lambda: blob.upload_blob(
            data, overwrite=True, content_settings=ContentSettings(content_type="application/json")))

    def _get_object(self, key: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._blob_service().get_container_client(str(self.settings.sbom_container)).get_blob_client(key)
        try:
            return bytes(blob.download_blob().readall())
        except ResourceNotFoundError:
            return None

    def subject(self, record: ImageRecord) -> str:
        return record.name  # <definition>/<version>, not the long ARM id

    def _reconcile(self, records: list[ImageRecord]) -> None:
        for found in records:
            definition = found.extra["definition"]
            version = self.get_version(definition, found.extra["version"])
            if version is None or found.metadata is None:
                raise CloudError(f"azure: version {found.name} vanished | fix: run build again")
            self.mark_published([self.complete(definition, version, found.metadata)])

    def find_version(self, definition: str, build_key: str, managed_image: str = "") -> m.GalleryImageVersion | None:
        """This build's version: by build key tag, else (a Packer-made version) by its managed image source."""
        versions = self.versions(definition)
        for version in versions:
            if (version.tags or {}).get(BUILD_KEY_TAG) == build_key:
                return version
        for version in versions:
            if managed_image and _source_id(version).lower() == managed_image.lower():
                return version
        return None

    def create_version(self, definition: str, metadata: ImageMetadata,
                       storage: m.GalleryImageVersionStorageProfile) -> m.GalleryImageVersion:
        name = version_name(metadata)
        existing = self.get_version(definition, name)
        if existing is not None and (existing.tags or {}).get(BUILD_KEY_TAG) != metadata.build_key:
            raise CloudError(f"azure: version {definition}/{name} exists and is not build {metadata.build_key[:12]} "
                             "| fix: delete it, or build again a minute later (the version is the build minute)")
        version = m.GalleryImageVersion(
            location=self.settings.location, tags=metadata.to_tags(),
            properties=m.GalleryImageVersionProperties(
                publishing_profile=self.publishing_profile(self.target_regions()), storage_profile=storage,
                safety_profile=m.GalleryImageVersionSafetyProfile(allow_deletion_of_replicated_locations=True)))
        log.info("azure: creating version %s/%s", definition, name)
        return self.lro("create version", f"{definition}/{name}",
                        lambda: self.client.gallery_image_versions.begin_create_or_update(
                            self.rg, self.gallery, definition, name, version))

    def create_from_disk(self, definition: str, artifact: Artifact) -> m.GalleryImageVersion:
        if not self.storage_account:
            raise CloudError(f"{artifact.cell_id}: no storage account to upload the VHD to "
                             "| fix: set the storage account of clouds.azure (AzureImageStore storage_account=)")
        from imagebuilder.clouds.local import image_file_of

        metadata = artifact.metadata
        blob_name = f"{definition}/{version_name(metadata)}.vhd"
        with tempfile.TemporaryDirectory(prefix="imagebuilder-azure-") as work:
            vhd = fixed_vhd(image_file_of(artifact), Path(work))
            uri = self.upload(vhd, blob_name, metadata)
        account_id = (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.storage_resource_group}"
                      f"/providers/Microsoft.Storage/storageAccounts/{self.storage_account}")
        storage = m.GalleryImageVersionStorageProfile(os_disk_image=m.GalleryOSDiskImage(
            source=m.GalleryDiskImageSource(uri=uri, storage_account_id=account_id)))
        version = self.create_version(definition, metadata, storage)
        if not self.keep_upload:
            self._delete_upload(blob_name)
        return version

    def _blob_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        url = self.blob_endpoint or f"https://{self.storage_account}.blob.core.windows.net"
        return BlobServiceClient(account_url=url, credential=self._blob_credential or self.credential,
                                 retry_total=self.retry_total, retry_backoff_factor=self.retry_backoff)

    def upload(self, vhd: Path, blob_name: str, metadata: ImageMetadata) -> str:
        """The VHD as a page blob (all-zero pages skipped); an identical blob of this build is reused."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobType

        service = self._blob_service()
        container = service.get_container_client(self.container)
        try:
            self.call("create container", self.container, container.create_container)
        except CloudError as error:
            if "ContainerAlreadyExists" not in str(error):
                raise
        except ResourceExistsError:
            pass
        blob = container.get_blob_client(blob_name)
        size = vhd.stat().st_size
        try:
            props = self.call("get blob", blob_name, blob.get_blob_properties)
            if props.size == size and (props.metadata or {}).get(BUILD_KEY_TAG.replace("-", "_")) == \
                    metadata.build_key and props.blob_type == BlobType.PAGEBLOB:
                log.info("azure: %s already uploaded", blob.url)
                return str(blob.url)
        except Missing:
            pass
        log.info("azure: uploading %s (%d bytes) to %s", vhd.name, size, blob.url)
        with vhd.open("rb") as handle:
            self.call("upload", blob_name, lambda: blob.upload_blob(
                handle, blob_type=BlobType.PAGEBLOB, length=size, overwrite=True, max_concurrency=2,
                metadata={BUILD_KEY_TAG.replace("-", "_"): metadata.build_key}))
        return str(blob.url)

    def _delete_upload(self, blob_name: str) -> None:
        try:
            self._blob_service().get_container_client(self.container).delete_blob(blob_name)
        except AzureError as exc:
            log.warning("azure: left %s/%s behind: %s", self.container, blob_name, one_line(str(exc))[:200])

    def complete(self, definition: str, version: m.GalleryImageVersion, metadata: ImageMetadata) -> ImageRecord:
        """Wait for the version, then tags and target regions as configured; only a difference is patched."""
        version = self.wait_version(definition, version)
        record = record_of(version, self.settings.location)
        tags = {**(version.tags or {}), **metadata.to_tags()}
        wanted = self.target_regions()
        have = record.extra["target_regions"]
        counts = set(record.extra["replica_counts"].values())
        regions = list(dict.fromkeys([*have, *wanted]))
        moved = [what for what, differs in (
            ("tags " + ", ".join(sorted(k for k in tags if (version.tags or {}).get(k) != tags[k])),
             tags != (version.tags or {})),
            ("target regions " + ", ".join(regions), regions != have),
            (f"replica count {self.settings.replica_count}", bool(counts - {self.settings.replica_count})))
            if differs]
        if moved and self.change(self.settings.location, f"{definition}/{version.name}", "; ".join(moved)):
            update = version_update(self.publishing_profile(regions), tags)
            name = str(version.name)
            version = self.lro("update version", f"{definition}/{name}",
                               lambda: self.client.gallery_image_versions.begin_update(
                                   self.rg, self.gallery, definition, name, update))
            record = record_of(version, self.settings.location)
        return record

    def wait_version(self, definition: str, version: m.GalleryImageVersion) -> m.GalleryImageVersion:
        deadline = time.monotonic() + self.operation_timeout
        while _state(version) == "pending":
            if time.monotonic() > deadline:
                raise CloudError(f"azure: version {definition}/{version.name} still creating after "
                                 f"{self.operation_timeout:.0f}s | fix: run publish again later")
            self.sleep(self.polling_interval)
            found = self.get_version(definition, str(version.name))
            if found is None:
                raise CloudError(f"azure: version {definition}/{version.name} vanished | fix: run publish again")
            version = found
        if _state(version) == "failed":
            raise CloudError(f"azure: version {definition}/{version.name} failed "
                             "| fix: run publish again; it removes the failed version first")
        return version

    # -- the rest of the interface ---------------------------------------------------------------

    def list_images(self, filters: ImageFilter | None = None) -> list[ImageRecord]:
        filters = filters or ImageFilter()
        records = [record_of(version, self.settings.location)
                   for definition in self.definitions() for version in self.versions(definition)]
        return sort_newest_first([r for r in records if filters.matches(r)])

    def find_by_build_key(self, build_key: str, region: str | None = None) -> list[ImageRecord]:
        """This build's images, a failed one left out: it holds nothing to launch, publish replaces it."""
        return [r for r in self.list_images(ImageFilter(build_key=build_key, region=region)) if r.state != "failed"]

    def _patch(self, image: ImageRecord, update: m.GalleryImageVersionUpdate, what: str) -> m.GalleryImageVersion:
        definition, version = image.extra["definition"], image.extra["version"]
        return self.lro(what, image.name, lambda: self.client.gallery_image_versions.begin_update(
            self.rg, self.gallery, definition, version, update))

    def tag(self, image: ImageRecord, tags: dict[str, str]) -> None:
        current = self.get_version(image.extra["definition"], image.extra["version"])
        if current is None:
            raise CloudError(f"azure: version {image.name} vanished | fix: list the images again")
        self._patch(image, m.GalleryImageVersionUpdate(tags={**(current.tags or {}), **tags}), "tag version")

    def copy_to_regions(self, image: ImageRecord, regions: Sequence[str]) -> dict[str, str]:
        """Replicas in more regions: the version's target regions grow (existing ones are kept)."""
        have = image.extra["target_regions"]
        wanted = list(dict.fromkeys([*have, *regions]))
        if wanted != have:
            self._patch(image, version_update(self.publishing_profile(wanted)), "replicate version")
        return {region: image.image_id for region in wanted}

    def share(self, image: ImageRecord, principals: Sequence[str] = (), public: bool = False) -> None:
        """Share the gallery with these subscriptions (Azure shares galleries, not single versions)."""
        if public:
            raise CloudError(f"azure: {image.name} cannot be made public from a private gallery "
                             "| fix: publish to a community gallery instead")
        if not principals:
            return
        update = m.SharingUpdate(operation_type="Add", groups=[m.SharingProfileGroup(type="Subscriptions",
                                                                                     ids=list(principals))])
        self.lro("share gallery", self.gallery, lambda: self.client.gallery_sharing_profile.begin_update(
            self.rg, self.gallery, update))

    def deprecate(self, image: ImageRecord, when: datetime, end_of_life: datetime | None = None) -> None:
        """Excluded from 'latest' now (Azure cannot schedule it), `when` recorded as the deprecation
        time (a tag), and `end_of_life` (retention's now plus the grace) as its endOfLifeDate.

        Azure rejects an endOfLifeDate that is not in the future, so it is at least an hour ahead."""
        when = as_utc(when)
        end_of_life = max(as_utc(end_of_life or when), utcnow() + MIN_END_OF_LIFE_AHEAD)
        profile = m.GalleryImageVersionPublishingProfile(exclude_from_latest=True, end_of_life_date=end_of_life)
        current = self.get_version(image.extra["definition"], image.extra["version"])
        if current is None:
            raise CloudError(f"azure: version {image.name} vanished | fix: list the images again")
        tags = {**(current.tags or {}), DEPRECATED_TAG: when.isoformat()}  # the tags as they are now, not as listed
        self._patch(image, version_update(profile, tags), "deprecate version")

    def in_use(self, image: ImageRecord) -> list[str] | None:
        return self.images_in_use([image])[image.image_id]

    def images_in_use(self, records: Sequence[ImageRecord]) -> dict[str, list[str] | None]:
        """Virtual machines and scale sets of the subscription made from each version.

        A reference to the version's id pins it; so does a reference to its definition (the
        'latest' version) on a VM whose exactVersion is this version.
        """
        users: dict[str, list[str] | None] = {r.image_id: [] for r in records}
        by_id = {r.image_id.lower(): r for r in records}
        machines = self.call("list virtual machines", self.subscription_id,
                             lambda: list(self.client.virtual_machines.list_all()))
        scale_sets = self.call("list scale sets", self.subscription_id,
                               lambda: list(self.client.virtual_machine_scale_sets.list_all()))
        references: list[tuple[str, Any]] = []
        for vm in machines:
            storage = vm.properties.storage_profile if vm.properties else None
            references.append((f"virtual machine {vm.name}", storage.image_reference if storage else None))
        for scale_set in scale_sets:
            profile = scale_set.properties.virtual_machine_profile if scale_set.properties else None
            set_storage = profile.storage_profile if profile else None
            references.append((f"scale set {scale_set.name}", set_storage.image_reference if set_storage else None))
        for user, reference in references:
            reference_id = str(getattr(reference, "id", "") or "").lower()
            exact = str(getattr(reference, "exact_version", "") or "")
            record = by_id.get(reference_id) or by_id.get(f"{reference_id}/versions/{exact}".lower())
            if record is not None:
                found = users[record.image_id]
                assert found is not None
                found.append(user)
        return users

    def delete(self, image: ImageRecord) -> list[str]:
        definition, version = image.extra["definition"], image.extra["version"]
        self.lro("delete version", image.name, lambda: self.client.gallery_image_versions.begin_delete(
            self.rg, self.gallery, definition, version))
        return [image.image_id]


def version_update(profile: m.GalleryImageVersionPublishingProfile,
                   tags: dict[str, str] | None = None) -> m.GalleryImageVersionUpdate:
    """A PATCH body: the publishing profile (merged by Azure) and, when given, the whole tag set."""
    body: dict[str, Any] = {"properties": {"publishingProfile": profile.as_dict()}}
    if tags is not None:
        body["tags"] = tags
    return m.GalleryImageVersionUpdate(body)


class Missing(CloudError):
    """The resource does not exist (HTTP 404)."""

    def __init__(self, error: CloudError) -> None:
        super().__init__(str(error))


def record_of(version: m.GalleryImageVersion, location: str) -> ImageRecord:
    tags = dict(version.tags or {})
    props = version.properties or m.GalleryImageVersionProperties({})
    profile = props.publishing_profile or m.GalleryImageVersionPublishingProfile()
    regions = [r.name for r in profile.target_regions or []]
    end_of_life = parse_time(profile.end_of_life_date)
    excluded = bool(profile.exclude_from_latest)
    created = parse_time(profile.published_date) or EPOCH
    deprecated_tag = _deprecated_tag(tags)
    parts = (version.id or "").split("/")
    definition = parts[-3] if len(parts) >= 3 else ""
    return ImageRecord(
        cloud="azure",
        region=location,
        image_id=version.id or "",
        name=f"{definition}/{version.name}",
        created_at=created,
        metadata=ImageMetadata.from_tags(tags),
        state=_state(version),
        deprecated_at=deprecated_tag if deprecated_tag and excluded else (
            end_of_life if end_of_life and (excluded or end_of_life <= utcnow()) else created if excluded else None),
        tags=tags,
        extra={"definition": definition, "version": version.name, "target_regions": regions,
               "replica_counts": {r.name: r.regional_replica_count for r in profile.target_regions or []},
               "exclude_from_latest": excluded, "end_of_life": profile.end_of_life_date,
               "provisioning_state": _text(props.provisioning_state), "source": _source_id(version)},
    )


def _deprecated_tag(tags: dict[str, str]) -> datetime | None:
    """Our deprecation time; a tag that does not parse counts as none (end of life decides then)."""
    try:
        return parse_time(tags.get(DEPRECATED_TAG))
    except ValueError:
        return None



def _state(version: m.GalleryImageVersion) -> str:
    raw = _text(version.properties.provisioning_state if version.properties else "").lower()
    return STATES.get(raw, raw)


def _text(value: Any) -> str:
    """An SDK enum (a str Enum) or a plain string, as its wire value."""
    return str(getattr(value, "value", value) or "")


def _source_id(version: m.GalleryImageVersion) -> str:
    storage = version.properties.storage_profile if version.properties else None
    return str((storage.source.id if storage and storage.source else "") or "")


def fixed_vhd(source: Path, work: Path) -> Path:
    """source (qcow2/raw) -> a fixed VHD whose virtual size is a whole MiB, as Azure requires."""
    raw = aligned_raw(source, work, MIB)
    vhd = work / "disk.vhd"
    run_tool(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
              str(raw), str(vhd)], source)
    raw.unlink()
    return vhd


def azure_error(exc: HttpResponseError, operation: str, subject: str) -> CloudError:
    code = str(getattr(exc.error, "code", "") or "") if exc.error else ""
    status = exc.status_code
    message = one_line(str(getattr(exc.error, "message", "") or exc.message or exc))[:300]
    what = f"azure: {operation} {subject}".rstrip()
    if code in QUOTA_CODES and ("quota" in message.lower() or code != "OperationNotAllowed"):
        return CloudError(f"{what}: quota exceeded ({code}: {message}) "
                          "| fix: raise the quota or prune old versions (imagebuilder retention), then run it again")
    if code == "OperationNotAllowed":
        return CloudError(f"{what} was not allowed ({message}) "
                          "| fix: wait for its end of life or change the version's safety profile")
    if status == 429 or (status or 0) >= 500:
        return CloudError(f"{what}: still throttled or unavailable after retries ({status} {code}) "
                          "| fix: run it again later")
    if status == 403 or code in ("AuthorizationFailed", "LinkedAuthorizationFailed"):
        return CloudError(f"{what} was denied ({code}: {message}) "
                          "| fix: grant the publishing identity Contributor on the resource group")
    if status == 404:
        return CloudError(f"{what}: not found ({code}: {message})")
    return CloudError(f"{what} failed ({code or status}: {message})")
