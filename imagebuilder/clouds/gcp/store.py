"""GCP: publish and catalogue Compute Engine images, one image family per (os, minor).

Images carry the metadata as labels. Label values allow only ``[a-z0-9_-]``, so values are
made label-safe (``v1.31.4`` becomes ``v1-31-4``) and the original values are kept, whole,
as JSON in the image's ``description``; reading an image back takes the metadata from there
(and falls back to the labels for images that never went through publish).

Consumers use the family ``capi-<os>-k8s-<minor with dashes>``. GCE resolves a family to its
newest image that is not deprecated, by creation time. ``publish`` therefore keeps exactly one
image of the family active: the one built last (by build timestamp); every other one is marked
DEPRECATED with that image as its replacement, even when an older build is published later.

Two ways in:

* a ``googlecompute`` Packer build already made the image: publish waits for it to be READY,
  labels it, writes the description and the family;
Either way, the build's SBOM and provenance go to ``gs://<sbom_bucket>/<sbom_prefix><image name>...``
when ``sbom_bucket`` is set; the SBOM's sha256 is in the labels (two of them: a label holds 63
characters) and whole in the description.

* a locally built disk (qemu): its disk is converted to ``disk.raw`` (sized to whole GiB, as
  GCE requires), packed sparse into a ``tar.gz``, uploaded to a GCS bucket and imported with
  ``images.insert`` (``rawDisk.source``). The import carries a fresh ``requestId`` reused by
  every retry, and the image name derives from the build, so a retried or repeated publish
  finds the image it made instead of making a second one.

Credentials come from ``google.auth.default()`` (through the client libraries) unless a
caller passes its own; they are never logged. 429s, 5xx answers and rate-limit 403s are
retried a bounded number of times with exponential backoff; quota errors and failed
operations become one-line CloudErrors.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions
from google.cloud import compute_v1, storage  # type: ignore[attr-defined]

from imagebuilder.artifact import Artifact
from imagebuilder.clouds.disks import aligned_raw, run_tool
from imagebuilder.clouds import CloudError, ImageFilter, ImageRecord, ImageStore, sort_newest_first, utcnow
from imagebuilder.clouds.gcp.settings import GcpSettings
from imagebuilder.clouds.gcp.naming import image_family as gcp_image_family
from imagebuilder.metadata import ImageMetadata, gcp_label_value, tag_key
from imagebuilder.retry import retrying
from imagebuilder.textline import one_line
from imagebuilder.timeparse import EPOCH, as_utc, parse_time

log = logging.getLogger(__name__)
T = TypeVar("T")

REGION = "global"  # GCE images are global resources
BUILD_KEY_LABEL = tag_key("build_key")
DESCRIPTION_KEY = "imagebuilder"
IMAGE_USER_ROLE = "roles/compute.imageUser"
PUBLIC_MEMBER = "allAuthenticatedUsers"
GCS_URL = "https://storage.googleapis.com"
UPLOAD_PREFIX = "imagebuilder/"
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024
GIB = 1 << 30
RETRYABLE = (gexc.TooManyRequests, gexc.ServiceUnavailable, gexc.InternalServerError, gexc.BadGateway,
             gexc.GatewayTimeout, gexc.DeadlineExceeded)
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
QUOTA_REASONS = frozenset({"quotaExceeded", "QUOTA_EXCEEDED"})
STATES = {"READY": "available", "PENDING": "pending", "FAILED": "failed", "DELETING": "deleting"}
ARCHITECTURES = {"amd64": "X86_64", "arm64": "ARM64"}
GUEST_OS_FEATURES = ("UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE", "GVNIC")
INACTIVE_STATES = ("DEPRECATED", "OBSOLETE", "DELETED")
OBSOLETE_STATES = ("OBSOLETE", "DELETED")  # new uses refused (DELETED is only a mark: the image is still there)
COMPUTE_CLIENTS: dict[str, Any] = {"operations": compute_v1.GlobalOperationsClient,
                                   "disks": compute_v1.DisksClient,
                                   "templates": compute_v1.InstanceTemplatesClient}


def image_family(metadata: ImageMetadata) -> str:
    """The family consumers launch from (the planner's naming, used by render too)."""
    return gcp_image_family(metadata.os, metadata.kubernetes_minor, metadata.arch, metadata.variant or None)


def image_name_for(metadata: ImageMetadata) -> str:
    """A GCE name for an imported build (CAPG style), fixed by the build so re-runs find it."""
    stamp = metadata.build_timestamp or metadata.build_key[:12]
    name = re.sub(r"[^a-z0-9-]+", "-", f"cluster-api-{metadata.os}-{metadata.kubernetes_version}-{stamp}".lower())
    return re.sub(r"-+", "-", name)[:63].rstrip("-")


def describe(metadata: ImageMetadata) -> str:
    """The description: the original metadata values as JSON, where labels cannot hold them."""
    return json.dumps({"summary": f"Kubernetes {metadata.kubernetes_version} node for {metadata.os} "
                                  f"({metadata.arch}), built by imagebuilder",
                       DESCRIPTION_KEY: metadata.to_tags()}, sort_keys=True, separators=(",", ":"))


def metadata_of(labels: dict[str, str], description: str) -> ImageMetadata | None:
    """The description's JSON when it belongs to these labels, else what the labels hold."""
    try:
        tags = json.loads(description)[DESCRIPTION_KEY]
        from_description = ImageMetadata.from_tags(tags) if isinstance(tags, dict) else None
    except (ValueError, TypeError, KeyError):
        from_description = None
    if from_description and gcp_label_value(from_description.build_key) == labels.get(BUILD_KEY_LABEL):
        return from_description
    return ImageMetadata.from_gcp_labels(labels)


class Missing(CloudError):
    """The resource does not exist (HTTP 404)."""

    def __init__(self, error: CloudError) -> None:
        super().__init__(str(error))


class GcpImageStore(ImageStore):
    cloud = "gcp"
    attestation_setting = "sbom_bucket"
    attestation_scheme = "gs"

    def __init__(self, settings: GcpSettings, *, credentials: Any = None, api_endpoint: str | None = None,
                 storage_endpoint: str | None = None, bucket: str | None = None, max_attempts: int = 6,
                 backoff: float = 1.0, poll_interval: float = 2.0, operation_timeout: float = 3600.0,
                 page_size: int = 500, keep_upload: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.project = settings.project_id
        self.bucket = bucket or getattr(settings, "upload_bucket", None)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.poll_interval = poll_interval
        self.operation_timeout = operation_timeout
        self.page_size = page_size
        self.keep_upload = keep_upload
        self.sleep = sleep
        self._credentials = credentials
        self._api_endpoint = api_endpoint
        self._storage_endpoint = storage_endpoint
        self._clients: dict[str, Any] = {}

    # -- clients and calls -------------------------------------------------------------

    def _client(self, kind: str) -> Any:
        if kind not in self._clients:
            options = {"api_endpoint": self._api_endpoint} if self._api_endpoint else None
            try:
                if kind == "images":
                    client: Any = compute_v1.ImagesClient(credentials=self._credentials, transport="rest",
                                                          client_options=options)
                elif kind in COMPUTE_CLIENTS:
                    client = COMPUTE_CLIENTS[kind](credentials=self._credentials, transport="rest",
                                                   client_options=options)
                else:
                    storage_options = {"api_endpoint": self._storage_endpoint} if self._storage_endpoint else None
                    client = storage.Client(project=self.project, credentials=self._credentials,
                                            client_options=storage_options)
            except auth_exceptions.DefaultCredentialsError:
                raise CloudError("gcp: no Google credentials found | fix: set GOOGLE_APPLICATION_CREDENTIALS or run "
                                 "'gcloud auth application-default login'") from None
            self._clients[kind] = client
        return self._clients[kind]

    @property
    def images(self) -> compute_v1.ImagesClient:
        return self._client("images")

    def call(self, operation: str, subject: str, run: Callable[[], T]) -> T:
        """run(), retried on throttling and 5xx; failures become one-line CloudErrors."""
        def retrying_in(exc: Exception, delay: float) -> None:
            log.info("gcp %s: %s %s throttled or unavailable (%s), retrying in %.1fs",
                     self.project, operation, subject, getattr(exc, "code", ""), delay)

        try:
            return retrying(run, attempts=self.max_attempts, first_delay=self.backoff, retryable=_retryable,
                            sleep=self.sleep, on_retry=retrying_in)
        except gexc.NotFound as exc:
            raise Missing(gcp_error(exc, self.project, operation, subject)) from None
        except gexc.GoogleAPICallError as exc:
            raise gcp_error(exc, self.project, operation, subject) from None
        except (auth_exceptions.GoogleAuthError, OSError) as exc:
            raise CloudError(f"gcp {self.project}: {operation} {subject} failed: {one_line(str(exc))} "
                             "| fix: check the network, the endpoint and the credentials") from None

    def wait(self, operation: compute_v1.Operation, subject: str) -> None:
        """Wait (global operations' wait, bounded by operation_timeout) and raise if it failed."""
        deadline = time.monotonic() + self.operation_timeout
        operations = self._client("operations")
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise CloudError(f"gcp {self.project}: {operation.operation_type} {subject} still running after "
                                 f"{self.operation_timeout:.0f}s (operation {operation.name}) "
                                 "| fix: run publish again later; it finds the image instead of making another")
            name = operation.name
            operation = self.call("wait", name, lambda name=name: operations.wait(  # type: ignore[misc]
                project=self.project, operation=name))
            if operation.status != compute_v1.Operation.Status.DONE and self.poll_interval:
                self.sleep(self.poll_interval)
        errors = list(operation.error.errors) if "error" in operation else []
        if errors:
            raise operation_error(self.project, operation, subject, errors[0].code, errors[0].message)

    # -- reading -------------------------------------------------------------------------

    def get(self, name: str) -> compute_v1.Image | None:
        try:
            return self.call("get", name, lambda: self.images.get(project=self.project, image=name))
        except Missing:
            return None

    def _list(self, filter_text: str = "") -> list[compute_v1.Image]:
        request = compute_v1.ListImagesRequest(project=self.project, max_results=self.page_size)
        if filter_text:
            request.filter = filter_text
        return self.call("list", self.project, lambda: list(self.images.list(request=request)))

    def list_images(self, filters: ImageFilter | None = None) -> list[ImageRecord]:
        filters = filters or ImageFilter()
        if filters.region not in (None, REGION):
            return []
        terms = [f'(labels.{tag_key(name)} = "{gcp_label_value(value)}")' for name, value in (
            ("os", filters.os), ("kubernetes_minor", filters.kubernetes_minor), ("arch", filters.arch),
            ("build_key", filters.build_key)) if value is not None]
        records = [record_of(image) for image in self._list(" AND ".join(terms))]
        return sort_newest_first([r for r in records if r.metadata is not None or filters.include_foreign])

    def find_by_build_key(self, build_key: str, region: str | None = None) -> list[ImageRecord]:
        """This build's images, a failed one left out: it holds nothing to launch, publish replaces it."""
        return [r for r in self.list_images(ImageFilter(build_key=build_key, region=region)) if r.state != "failed"]

    def check_access(self) -> None:
        """Read one image of the project: the credentials, the project and compute.images.list."""
        request = compute_v1.ListImagesRequest(project=self.project, max_results=1)
        self.call("list", self.project, lambda: next(iter(self.images.list(request=request)), None))

    def family_images(self, family: str) -> list[ImageRecord]:
        return [record_of(image) for image in self._list(f'(family = "{family}")')]

    # -- publish ---------------------------------------------------------------------------

    def publish(self, artifact: Artifact) -> dict[str, str]:
        metadata = artifact.metadata
        if artifact.cloud == "gcp":
            name = artifact.ids.get("default") or artifact.image_name
            image = self.wait_ready(name)
        elif artifact.cloud in ("qemu", "local"):
            image = self.import_disk(artifact)
        else:
            raise CloudError(f"{artifact.cell_id}: a {artifact.cloud} artifact cannot be published to GCP "
                             "| fix: publish a googlecompute or a qemu build")
        record = self.complete(image, metadata)
        self.settle_family(record)
        self.store_attestations(replace(artifact, image_name=record.name), REGION)
        self.mark_published([record])
        return {REGION: record.image_id}

    def _put_object(self, key: str, data: bytes) -> None:
        blob = self._client("storage").bucket(self.settings.sbom_bucket).blob(key)
        self.call("upload", f"gs://{self.settings.sbom_bucket}/{key}", lambda: blob.upload_from_string(
            data, content_type="application/json", retry=storage.retry.DEFAULT_RETRY))

    def _get_object(self, key: str) -> bytes | None:
        blob = self._client("storage").bucket(self.settings.sbom_bucket).blob(key)
        try:
            return bytes(self.call("download", f"gs://{self.settings.sbom_bucket}/{key}", blob.download_as_bytes))
        except Missing:
            return None

    def _reconcile(self, records: list[ImageRecord]) -> None:
        for found in records:
            if found.state != "available" or found.metadata is None:
                raise CloudError(f"gcp {self.project}: image {found.image_id} is {found.state} "
                                 "| fix: run build again; a failed image is replaced")
            record = self.complete(self.wait_ready(found.image_id), found.metadata)
            self.settle_family(record)
            self.mark_published([record])

    def wait_ready(self, name: str) -> compute_v1.Image:
        """The image once READY; a clear error when it failed or never appears."""
        deadline = time.monotonic() + self.operation_timeout
        while True:
            image = self.get(name)
            if image is None:
                raise CloudError(f"gcp {self.project}: image {name} does not exist (or vanished) "
                                 "| fix: check the project and the Packer manifest; build the cell again")
            if image.status == "READY":
                return image
            if image.status == "FAILED":
                raise CloudError(f"gcp {self.project}: image {name} FAILED "
                                 "| fix: delete it and build or publish again")
            if time.monotonic() > deadline:
                raise CloudError(f"gcp {self.project}: image {name} still {image.status} after "
                                 f"{self.operation_timeout:.0f}s | fix: run publish again later")
            self.sleep(self.poll_interval)

    def import_disk(self, artifact: Artifact) -> compute_v1.Image:
        """This build's image: found by build key (waiting for or replacing an unfinished one), else imported."""
        metadata = artifact.metadata
        for found in self._list(f'(labels.{BUILD_KEY_LABEL} = "{gcp_label_value(artifact.build_key)}")'):
            if found.status in ("READY", "PENDING"):
                log.info("gcp %s: %s already holds build %s", self.project, found.name, artifact.build_key[:12])
                return self.wait_ready(found.name)
            if found.status == "FAILED":
                log.info("gcp %s: removing failed image %s before importing again", self.project, found.name)
                self.delete(record_of(found))
        if not self.bucket:
            raise CloudError(f"{artifact.cell_id}: no GCS bucket to upload the disk to "
                             "| fix: set the upload bucket of clouds.gcp (GcpImageStore bucket=)")
        from imagebuilder.clouds.local import image_file_of

        name = image_name_for(metadata)
        source = image_file_of(artifact)
        with tempfile.TemporaryDirectory(prefix="imagebuilder-gcp-") as work:
            tarball = disk_tarball(source, Path(work))
            blob_name = f"{UPLOAD_PREFIX}{name}.tar.gz"
            self.upload(tarball, blob_name, metadata)
        image = compute_v1.Image(
            name=name, family=image_family(metadata),
            description=describe(metadata), labels=metadata.to_gcp_labels(),
            raw_disk=compute_v1.RawDisk(source=f"{GCS_URL}/{self.bucket}/{blob_name}"),
            storage_locations=list(self.settings.storage_locations),
            architecture=ARCHITECTURES.get(metadata.arch, "ARCHITECTURE_UNSPECIFIED"),
            guest_os_features=[compute_v1.GuestOsFeature(type_=kind) for kind in GUEST_OS_FEATURES],
        )
        # one requestId per import, reused by every retry of it: GCE runs a request id once
        request = compute_v1.InsertImageRequest(project=self.project, image_resource=image,
                                                request_id=str(uuid.uuid4()))
        try:
            operation = self.call("insert", name, lambda: self.images.insert_unary(request=request))
            self.wait(operation, name)
        except CloudError as error:
            if "alreadyExists" not in str(error):
                raise
            existing = self.get(name)
            if existing is None or existing.labels.get(BUILD_KEY_LABEL) != gcp_label_value(artifact.build_key):
                raise CloudError(f"gcp {self.project}: an image named {name} exists and is not build "
                                 f"{artifact.build_key[:12]} | fix: delete or rename it") from None
        if not self.keep_upload:
            self._delete_upload(blob_name)
        return self.wait_ready(name)

    def upload(self, tarball: Path, blob_name: str, metadata: ImageMetadata) -> None:
        """Resumable upload to gs://bucket/blob_name; overwriting the same build is harmless, so retried."""
        bucket = self._client("storage").bucket(self.bucket)
        blob = bucket.blob(blob_name, chunk_size=UPLOAD_CHUNK_BYTES)
        blob.metadata = {BUILD_KEY_LABEL: metadata.build_key}
        log.info("gcp %s: uploading %s to gs://%s/%s", self.project, tarball.name, self.bucket, blob_name)
        self.call("upload", f"gs://{self.bucket}/{blob_name}", lambda: blob.upload_from_filename(
            str(tarball), content_type="application/gzip", retry=storage.retry.DEFAULT_RETRY))

    def _delete_upload(self, blob_name: str) -> None:
        try:
            self._client("storage").bucket(self.bucket).blob(blob_name).delete()
        except gexc.GoogleAPICallError as exc:
            log.warning("gcp %s: left gs://%s/%s behind: %s", self.project, self.bucket, blob_name, exc.message)

    def complete(self, image: compute_v1.Image, metadata: ImageMetadata) -> ImageRecord:
        """Labels, description and family as the metadata says; only what differs is changed."""
        name = image.name
        labels = {**dict(image.labels), **metadata.to_gcp_labels()}
        if labels != dict(image.labels) and self.change(REGION, name, "labels " + ", ".join(
                sorted(key for key in labels if image.labels.get(key) != labels[key]))):
            request = compute_v1.GlobalSetLabelsRequest(labels=labels, label_fingerprint=image.label_fingerprint)
            self.wait(self.call("setLabels", name, lambda: self.images.set_labels_unary(
                project=self.project, resource=name, global_set_labels_request_resource=request)), name)
        family = image_family(metadata)
        description = describe(metadata)
        moved = [what for what, have, want in (("family " + family, image.family, family),
                                              ("description", image.description, description)) if have != want]
        if moved and self.change(REGION, name, ", ".join(moved)):
            patch = compute_v1.Image(family=family, description=description)
            self.wait(self.call("patch", name, lambda: self.images.patch_unary(
                project=self.project, image=name, image_resource=patch)), name)
        return record_of(self.wait_ready(name))

    def settle_family(self, published: ImageRecord) -> list[str]:
        """Deprecate every active image of the family (same arch) but the newest build; returns their names."""
        meta = published.metadata
        if meta is None:
            return []
        family = image_family(meta)
        active = [r for r in self.family_images(family)
                  if r.state == "available" and r.metadata is not None and r.metadata.arch == meta.arch
                  and r.extra.get("deprecation_state") in ("", "ACTIVE")]
        if not active:
            return []
        newest = max(active, key=lambda r: (r.build_time, r.created_at, r.image_id))
        older = [r for r in active if r.image_id != newest.image_id]
        for record in older:
            log.info("gcp %s: %s deprecated, replaced by %s", self.project, record.image_id, newest.image_id)
            if self.change(REGION, record.image_id, f"deprecated, replaced by {newest.image_id}"):
                self.deprecate(record, utcnow(), replacement=newest.extra["self_link"])
        return [r.image_id for r in older]

    # -- the rest of the interface ---------------------------------------------------------------

    def tag(self, image: ImageRecord, tags: dict[str, str]) -> None:
        """Labels (made label-safe); keys must already be label keys ([a-z][a-z0-9_-]*)."""
        current = self.get(image.image_id)
        if current is None:
            raise CloudError(f"gcp {self.project}: image {image.image_id} vanished | fix: list the images again")
        labels = {**dict(current.labels), **{key: gcp_label_value(value) for key, value in tags.items()}}
        request = compute_v1.GlobalSetLabelsRequest(labels=labels, label_fingerprint=current.label_fingerprint)
        self.wait(self.call("setLabels", image.image_id, lambda: self.images.set_labels_unary(
            project=self.project, resource=image.image_id, global_set_labels_request_resource=request)),
            image.image_id)

    def copy_to_regions(self, image: ImageRecord, regions: Sequence[str]) -> dict[str, str]:
        """GCE images are global: the same image serves every region; nothing is copied."""
        return {region: image.image_id for region in regions}

    def share(self, image: ImageRecord, principals: Sequence[str] = (), public: bool = False) -> None:
        """roles/compute.imageUser granted to exactly these members (user:, group:, serviceAccount:, domain:)."""
        for member in principals:
            if ":" not in member:
                raise CloudError(f"gcp: cannot share {image.image_id} with '{member}' "
                                 "| fix: name members as user:, group:, serviceAccount: or domain:")
        name = image.image_id
        policy = self.call("getIamPolicy", name, lambda: self.images.get_iam_policy(
            project=self.project, resource=name))
        members = sorted(set(principals) | ({PUBLIC_MEMBER} if public else set()))
        bindings = [b for b in policy.bindings if b.role != IMAGE_USER_ROLE]
        if members:
            bindings.append(compute_v1.Binding(role=IMAGE_USER_ROLE, members=members))
        have = sorted(m for b in policy.bindings if b.role == IMAGE_USER_ROLE for m in b.members)
        if have == members:
            return
        new_policy = compute_v1.Policy(bindings=bindings, etag=policy.etag, version=policy.version)
        self.call("setIamPolicy", name, lambda: self.images.set_iam_policy(
            project=self.project, resource=name,
            global_set_policy_request_resource=compute_v1.GlobalSetPolicyRequest(policy=new_policy)))

    def deprecate(self, image: ImageRecord, when: datetime, end_of_life: datetime | None = None,
                  replacement: str | None = None) -> None:
        """State DEPRECATED now (GCE does not schedule it), `when` recorded as the deprecation time
        and `end_of_life` as when it is to become OBSOLETE (informational, as GCE documents it).

        The replacement is the family's current image unless given.
        """
        if replacement is None and image.metadata is not None:
            replacement = self._family_head(image)
        status = compute_v1.DeprecationStatus(state="DEPRECATED", deprecated=as_utc(when).isoformat())
        if end_of_life is not None:
            status.obsolete = as_utc(end_of_life).isoformat()
        if replacement:
            status.replacement = replacement
        self._set_deprecation(image, status)

    def obsolete(self, image: ImageRecord, when: datetime, end_of_life: datetime | None = None) -> None:
        """State OBSOLETE: GCE refuses new disks and instances from it, running ones go on. The
        deprecation time and replacement stay; `when` is the obsolete time, `end_of_life` when it is
        to be deleted (informational: GCE deletes nothing by itself)."""
        deprecated = image.deprecated_at or when
        status = compute_v1.DeprecationStatus(state="OBSOLETE", deprecated=as_utc(deprecated).isoformat(),
                                              obsolete=as_utc(when).isoformat())
        if end_of_life is not None:
            status.deleted = as_utc(end_of_life).isoformat()
        if image.extra.get("replacement"):
            status.replacement = image.extra["replacement"]
        self._set_deprecation(image, status)

    def _set_deprecation(self, image: ImageRecord, status: compute_v1.DeprecationStatus) -> None:
        self.wait(self.call("deprecate", image.image_id, lambda: self.images.deprecate_unary(
            project=self.project, image=image.image_id, deprecation_status_resource=status)), image.image_id)

    def _family_head(self, image: ImageRecord) -> str | None:
        assert image.metadata is not None
        family = image_family(image.metadata)
        try:
            head = self.call("getFromFamily", family, lambda: self.images.get_from_family(
                project=self.project, family=family))
        except Missing:
            return None
        return None if head.name == image.image_id else head.self_link

    def in_use(self, image: ImageRecord) -> list[str] | None:
        return self.images_in_use([image])[image.image_id]

    def images_in_use(self, records: Sequence[ImageRecord]) -> dict[str, list[str] | None]:
        """Disks made from each image (with the instances using them) and instance templates naming it.

        Two aggregated listings for the whole project, however many images. A template that
        names a family pins no single image: the family moves on to the newest.
        """
        users: dict[str, list[str] | None] = {r.image_id: [] for r in records}
        disks = self._client("disks")
        templates = self._client("templates")
        disk_pages = self.call("list disks", self.project, lambda: list(disks.aggregated_list(
            request=compute_v1.AggregatedListDisksRequest(project=self.project))))
        for scope, scoped in disk_pages:
            for disk in scoped.disks:
                found = users.get(self._own_image(disk.source_image))
                if found is not None:
                    owners = ", ".join(url.rsplit("/", 1)[-1] for url in disk.users)
                    found.append(f"disk {scope}/{disk.name}" + (f" (instance {owners})" if owners else ""))
        template_pages = self.call("list instance templates", self.project, lambda: list(templates.aggregated_list(
            request=compute_v1.AggregatedListInstanceTemplatesRequest(project=self.project))))
        for scope, scoped in template_pages:
            for template in scoped.instance_templates:
                for disk in template.properties.disks:
                    found = users.get(self._own_image(disk.initialize_params.source_image))
                    if found is not None:
                        found.append(f"instance template {template.name} ({scope})")
        return users

    def _own_image(self, url: str) -> str:
        """The image name of a URL or partial path naming one of this project's images, else ''."""
        match = re.search(r"projects/([^/]+)/global/images/([^/]+)$", url or "")
        return match.group(2) if match and match.group(1) == self.project else ""

    def delete(self, image: ImageRecord) -> list[str]:
        """Delete the image; one already gone (a retried delete whose first answer was lost) counts as deleted."""
        try:
            operation = self.call("delete", image.image_id, lambda: self.images.delete_unary(
                project=self.project, image=image.image_id))
            self.wait(operation, image.image_id)
        except Missing:
            log.info("gcp %s: %s was already deleted", self.project, image.image_id)
        return [image.image_id]


def record_of(image: compute_v1.Image) -> ImageRecord:
    labels = dict(image.labels)
    deprecation = image.deprecated if "deprecated" in image else None
    state = deprecation.state if deprecation else ""
    deprecated_at = obsoleted_at = None
    if state in INACTIVE_STATES:
        deprecated_at = parse_time(deprecation.deprecated if deprecation else "") or parse_time(
            image.creation_timestamp)
    if state in OBSOLETE_STATES:  # its obsolete time, else (set by hand without one) its deprecation time
        obsoleted_at = parse_time(deprecation.obsolete if deprecation else "") or deprecated_at
    return ImageRecord(
        cloud="gcp",
        region=REGION,
        image_id=image.name,
        name=image.name,
        created_at=parse_time(image.creation_timestamp) or EPOCH,
        metadata=metadata_of(labels, image.description),
        state=STATES.get(image.status, image.status.lower()),
        deprecated_at=deprecated_at,
        obsoleted_at=obsoleted_at,
        tags=labels,
        extra={"id": str(image.id), "self_link": image.self_link, "family": image.family,
               "status": image.status, "deprecation_state": state,
               "replacement": deprecation.replacement if deprecation else "",
               "disk_size_gb": int(image.disk_size_gb or 0), "storage_locations": list(image.storage_locations)},
    )


def disk_tarball(source: Path, work: Path) -> Path:
    """source (qcow2/raw) -> work/disk.raw (whole GiB, sparse) -> work/disk.tar.gz as GCE imports it."""
    raw = aligned_raw(source, work, GIB)
    tarball = work / "disk.tar.gz"
    run_tool(["tar", "--format=oldgnu", "-Sczf", str(tarball), "-C", str(work), "disk.raw"], source)
    raw.unlink()
    return tarball


def _reasons(exc: gexc.GoogleAPICallError) -> set[str]:
    reasons = {str(e.get("reason", "")) for e in exc.errors if isinstance(e, dict)}
    if exc.reason:
        reasons.add(str(exc.reason))
    return reasons


def _retryable(exc: Exception) -> bool:
    if not isinstance(exc, gexc.GoogleAPICallError) or isinstance(exc, gexc.NotFound):
        return False
    return isinstance(exc, RETRYABLE) or bool(_reasons(exc) & RATE_LIMIT_REASONS)


def gcp_error(exc: gexc.GoogleAPICallError, project: str, operation: str, subject: str) -> CloudError:
    what = f"gcp {project}: {operation}" + (f" {subject}" if subject else "")
    reasons = _reasons(exc)
    message = one_line(exc.message or "")[:300]
    if reasons & QUOTA_REASONS:
        return CloudError(f"{what}: quota exceeded ({message}) "
                          "| fix: raise the quota or prune old images (imagebuilder retention), then run it again")
    if _retryable(exc):
        return CloudError(f"{what}: still throttled or unavailable after retries ({exc.code}) "
                          "| fix: run it again later")
    if isinstance(exc, gexc.Forbidden):
        return CloudError(f"{what} was denied ({message}) "
                          "| fix: grant roles/compute.storageAdmin (and storage.objectAdmin on the bucket)")
    if isinstance(exc, gexc.NotFound):
        return CloudError(f"{what}: not found ({message}) | fix: check the project, the bucket and the image name")
    if isinstance(exc, gexc.Conflict):
        return CloudError(f"{what}: alreadyExists ({message})")
    return CloudError(f"{what} failed ({exc.code}: {message})")


def operation_error(project: str, operation: compute_v1.Operation, subject: str, code: str,
                    message: str) -> CloudError:
    what = f"gcp {project}: {operation.operation_type or 'operation'} {subject} failed"
    message = one_line(message)[:300]
    if code in QUOTA_REASONS:
        return CloudError(f"{what}: quota exceeded ({message}) "
                          "| fix: raise the quota or prune old images (imagebuilder retention), then run it again")
    if code == "RESOURCE_ALREADY_EXISTS":
        return CloudError(f"{what}: alreadyExists ({message})")
    return CloudError(f"{what} ({code}: {message}) | fix: run publish again; it removes a failed image first")
