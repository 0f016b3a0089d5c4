"""The containerDisks in a registry repository (`clouds.kubevirt.registry`), over its HTTP API v2.

- An image is a manifest under imagebuilder's tag `<os>-kube-v<version>[-<arch>][-<variant>]-<build key 12>`;
  its id is `<repository>@sha256:<manifest digest>`, its metadata the config's labels (the same
  keys every cloud carries). A pushed manifest is whole (the registry refuses one whose blobs are
  missing), so a listed image is published.
- Labels cannot change after the push. Deprecation is a second tag on the same manifest,
  `sha256-<digest hex>.deprecated-<UTC YYYYMMDDhhmmss>` (cosign's `sha256-<hex>.sig` spelling): the
  time is in the tag, pulling by the image's own tag or digest goes on working, and deleting the
  manifest removes it with the image's other tags.
- Delete is `DELETE /v2/<name>/manifests/<digest>`. A registry with deletion disabled answers 405
  UNSUPPORTED: the image is kept and prune says so in one line. The blobs stay until the
  registry's garbage collection (`registry garbage-collect`).
- In use: see KubevirtSettings.in_use_check; by default unknown, so prune keeps every image.
- Tags that are not imagebuilder's are never listed or touched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imagebuilder.artifact import Artifact
from imagebuilder.clouds import CloudError, ImageFilter, ImageRecord, ImageStore, sort_newest_first, utcnow
from imagebuilder.clouds.kubevirt.containerdisk import ARCHIVE_SUFFIX
from imagebuilder.clouds.kubevirt.registryapi import OCI_MANIFEST, Registry
from imagebuilder.clouds.kubevirt.settings import KubevirtSettings
from imagebuilder.clouds.registry import DEFAULT_REGION
from imagebuilder.metadata import PUBLISHED_TAG, PUBLISHED_VALUE, ImageMetadata
from imagebuilder.osinfo import DEFAULT_ARCH
from imagebuilder.timeparse import as_utc

KEY_CHARS = 12  # of the build key, in the tag
OUR_TAG = re.compile(r"^(?P<os>[a-z0-9][a-z0-9.-]*?)-kube-v(?P<minor>\d+\.\d+)\.[0-9a-z.+_-]*?-(?P<key>[0-9a-f]{12})$")
DEPRECATION_TAG = re.compile(r"^sha256-(?P<hex>[0-9a-f]{64})\.deprecated-(?P<when>\d{14})$")
STAMP = "%Y%m%d%H%M%S"


def image_tag(metadata: ImageMetadata) -> str:
    """imagebuilder's tag of an image: `debian-12-kube-v1.35.1-0123456789ab` (arm64 and a variant named too)."""
    parts = [metadata.os, "kube", metadata.kubernetes_version,
             *([metadata.arch] if metadata.arch != DEFAULT_ARCH else []),
             *([metadata.variant] if metadata.variant else []), metadata.build_key[:KEY_CHARS]]
    return "-".join(parts).replace("+", "_")


def deprecation_tag(digest: str, when: datetime) -> str:
    return f"{digest.replace(':', '-')}.deprecated-{as_utc(when):{STAMP}}"


class RegistryStore(ImageStore):
    cloud = "kubevirt"
    title = "KubeVirt registry"

    def __init__(self, settings: KubevirtSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry, tls_verify=settings.tls_verify)
        self._configs: dict[str, dict[str, Any]] = {}  # config digest -> config (immutable: read once)

    @property
    def repository(self) -> str:
        return self.settings.registry

    def lock_key(self) -> str:
        return f"{self.cloud}:{self.repository}"

    # -- publish ---------------------------------------------------------------------------

    def publish(self, artifact: Artifact) -> dict[str, str]:
        existing = self.find_by_build_key(artifact.build_key)
        if existing:
            return {DEFAULT_REGION: existing[0].image_id}
        archive = next((f for f in artifact.files if f.endswith(ARCHIVE_SUFFIX)), None)
        if archive is None:
            raise CloudError(f"{artifact.cell_id}: no containerDisk ({ARCHIVE_SUFFIX}) among the build's files "
                             "| fix: build the cell again")
        tag = image_tag(artifact.metadata)
        if not self.change(DEFAULT_REGION, f"{self.repository}:{tag}", f"pushed from {archive}"):
            return {}
        digest = self.registry.push_archive(Path(archive), tag)
        return {DEFAULT_REGION: f"{self.repository}@{digest}"}

    def _reconcile(self, records: list[ImageRecord]) -> None:
        """Nothing to bring: labels are fixed at the push, and a pushed image is published."""

    # -- read ------------------------------------------------------------------------------

    def list_images(self, filters: ImageFilter | None = None) -> list[ImageRecord]:
        filters = filters or ImageFilter()
        if filters.region not in (None, DEFAULT_REGION):
            return []
        tags = self.registry.tags()
        deprecated = _deprecations(tags)
        records: dict[str, ImageRecord] = {}
        for tag in tags:
            match = OUR_TAG.match(tag)
            if match is None or not _may_match(match, filters):
                continue
            record = self._record(tag, deprecated)
            if record is not None and record.image_id not in records and filters.matches(record):
                records[record.image_id] = record
        return sort_newest_first(list(records.values()))

    def find_by_build_key(self, build_key: str, region: str | None = None) -> list[ImageRecord]:
        """Only the tags ending in the key's first characters are read."""
        return self.list_images(ImageFilter(build_key=build_key, region=region))

    def get(self, image_id: str) -> ImageRecord:
        digest = image_id.rpartition("@")[2]
        for record in self.list_images(ImageFilter(include_foreign=True)):
            if record.extra["digest"] == digest:
                return record
        raise CloudError(f"kubevirt {self.repository}: no image {image_id} "
                         "| fix: see 'imagebuilder images list --cloud kubevirt'")

    def _record(self, tag: str, deprecated: dict[str, datetime]) -> ImageRecord | None:
        found = self.registry.manifest(tag)
        if found is None:  # deleted since the listing
            return None
        digest, manifest, _ = found
        config_descriptor = manifest.get("config")
        if not isinstance(config_descriptor, dict):  # an index or a list: not a containerDisk of ours
            return None
        config = self._config(config_descriptor["digest"])
        labels = {str(k): str(v) for k, v in ((config.get("config") or {}).get("Labels") or {}).items()}
        annotations = manifest.get("annotations") or {}
        tags = {**{k: str(v) for k, v in annotations.items() if v}, **labels}
        metadata = ImageMetadata.from_tags(tags)
        if metadata is not None:
            tags[PUBLISHED_TAG] = PUBLISHED_VALUE  # a manifest in the registry is whole: nothing is left to publish
        created = _parse_created(config.get("created"))
        return ImageRecord(
            cloud=self.cloud, region=DEFAULT_REGION, image_id=f"{self.repository}@{digest}", name=tag,
            created_at=created, metadata=metadata, state="available",
            deprecated_at=deprecated.get(digest.partition(":")[2]), tags=tags,
            extra={"repository": self.repository, "tag": tag, "digest": digest,
                   "size": sum(int(layer.get("size", 0)) for layer in manifest.get("layers", [])),
                   "media_type": manifest.get("mediaType", OCI_MANIFEST)})

    def _config(self, digest: str) -> dict[str, Any]:
        if digest not in self._configs:
            self._configs[digest] = json.loads(self.registry.blob(digest))
        return self._configs[digest]

    # -- change ----------------------------------------------------------------------------

    def tag(self, image: ImageRecord, tags: dict[str, str]) -> None:
        changed = sorted(key for key, value in tags.items() if image.tags.get(key) != str(value))
        if changed:
            raise CloudError(f"kubevirt {image.image_id}: labels cannot change after the push ({', '.join(changed)}) "
                             "| fix: build the cell again (--force) to push an image with them")

    def copy_to_regions(self, image: ImageRecord, regions: Sequence[str]) -> dict[str, str]:
        others = [region for region in regions if region != DEFAULT_REGION]
        if others:
            raise CloudError(f"kubevirt: cannot copy {image.image_id} to {', '.join(others)} | fix: the "
                             "registry is one place; mirror the repository with the registry's own replication")
        return {DEFAULT_REGION: image.image_id} if regions else {}

    def share(self, image: ImageRecord, principals: Sequence[str] = (), public: bool = False) -> None:
        if principals or public:
            raise CloudError(f"kubevirt {image.image_id}: who may pull is the registry's to say "
                             "| fix: grant pull on the repository in the registry")

    def deprecate(self, image: ImageRecord, when: datetime, end_of_life: datetime | None = None) -> None:
        """A second tag on the image's manifest names the time (see the module's docstring)."""
        if image.deprecated_at is not None:
            return
        digest = image.extra["digest"]
        found = self.registry.manifest(digest)
        if found is None:
            raise CloudError(f"kubevirt {image.image_id}: no longer in the registry | fix: nothing to deprecate")
        _, manifest, data = found
        self.registry.put_manifest(deprecation_tag(digest, when), data, manifest.get("mediaType", OCI_MANIFEST))

    def delete(self, image: ImageRecord) -> list[str]:
        return [image.image_id] if self.registry.delete_manifest(image.extra["digest"]) else []

    def in_use(self, image: ImageRecord) -> list[str] | None:
        """"tags" (KubevirtSettings.in_use_check): the tags that are not imagebuilder's and point to the image."""
        if self.settings.in_use_check == "unknown":
            raise CloudError(f"kubevirt {image.image_id}: the registry cannot tell whether KubeVirt VMs still pull "
                             "it | fix: set clouds.kubevirt.in_use_check: tags once VMs name only tags you move "
                             "(an image no such tag points to is then unused)")
        digest = image.extra["digest"]
        others = [tag for tag in self.registry.tags() if not OUR_TAG.match(tag) and not DEPRECATION_TAG.match(tag)]
        return [f"tag {tag}" for tag in others if self.registry.digest_of(tag) == digest]

    def check_access(self) -> None:
        """Listing the repository's tags: reachable, and the credentials may read it."""
        self.registry.tags()


def _deprecations(tags: list[str]) -> dict[str, datetime]:
    """digest hex -> when it was deprecated (the earliest tag)."""
    found: dict[str, datetime] = {}
    for tag in tags:
        match = DEPRECATION_TAG.match(tag)
        if match is None:
            continue
        try:
            when = datetime.strptime(match["when"], STAMP).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        if match["hex"] not in found or when < found[match["hex"]]:
            found[match["hex"]] = when
    return found


def _may_match(match: re.Match[str], filters: ImageFilter) -> bool:
    """What the tag alone rules out (no request for those)."""
    return ((filters.os is None or match["os"] == filters.os)
            and (filters.kubernetes_minor is None or match["minor"] == filters.kubernetes_minor)
            and (filters.build_key is None or match["key"] == filters.build_key[:KEY_CHARS]))


def _parse_created(value: Any) -> datetime:
    if isinstance(value, str) and value:
        try:
            return as_utc(datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")))
        except ValueError:
            pass
    return utcnow()
