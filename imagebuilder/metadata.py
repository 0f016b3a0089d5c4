"""One metadata schema for every image, on every cloud and in the local catalogue."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

PREFIX = "imagebuilder-"
GCP_LABEL_VALUE = re.compile(r"[^a-z0-9_-]")
# Set last, on every copy of an image, once every publish step (copies, sharing, tags, SSM,
# replication) has succeeded. It is state, not build identity: it stays out of ImageMetadata
# (and out of the build key), so a record read back still equals the artifact's metadata.
PUBLISHED_TAG = PREFIX + "published"
PUBLISHED_VALUE = "true"


@dataclass(frozen=True)
class ImageMetadata:
    os: str
    os_version: str
    kubernetes_version: str  # "v1.31.4"
    kubernetes_minor: str  # "1.31"
    arch: str
    build_key: str
    cell: str
    version: str  # imagebuilder's own version
    git_commit: str
    build_timestamp: str = ""  # UTC "YYYYMMDDhhmmss" as Packer's formatdate writes it at build time

    def to_tags(self) -> dict[str, str]:
        """As AWS tags, OpenStack properties, Azure tags and local catalogue records carry it."""
        return {tag_key(name): value for name, value in asdict(self).items() if value != ""}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ImageMetadata | None:
        """None unless every required key is there: images without our metadata are not ours."""
        values: dict[str, str] = {}
        for item in fields(cls):
            key = tag_key(item.name)
            if key in tags:
                values[item.name] = str(tags[key])
            elif item.name != "build_timestamp":
                return None
        return cls(**values)

    def built_at(self) -> datetime | None:
        """The build time: Packer's "YYYYMMDDhhmmss" (UTC), or unix seconds; None when unset."""
        stamp = self.build_timestamp
        if len(stamp) == 14 and stamp.isdigit():
            return datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
        if stamp.isdigit():
            return datetime.fromtimestamp(int(stamp), timezone.utc)
        return None

    def to_gcp_labels(self) -> dict[str, str]:
        """GCE labels allow [a-z0-9_-] up to 63 characters; dots become dashes."""
        return {key: gcp_label_value(value) for key, value in self.to_tags().items()}


def is_published(tags: dict[str, str]) -> bool:
    """Whether an image's tags (labels, properties) say every publish step has completed."""
    return tags.get(PUBLISHED_TAG) == PUBLISHED_VALUE


def tag_key(name: str) -> str:
    return PREFIX + ("version" if name == "version" else name.replace("_", "-"))


def gcp_label_value(value: str) -> str:
    return GCP_LABEL_VALUE.sub("-", value.lower())[:63]


def metadata_for(cell: Any, version: str, git_commit: str) -> ImageMetadata:
    """The metadata of a planned cell (imagebuilder.planner.Cell)."""
    info = cell.os_info
    return ImageMetadata(
        os=cell.os,
        os_version=info.version,
        kubernetes_version=f"v{cell.kubernetes_version}",
        kubernetes_minor=cell.kubernetes,
        arch=cell.arch,
        build_key=cell.build_key,
        cell=cell.id,
        version=version,
        git_commit=git_commit,
    )
