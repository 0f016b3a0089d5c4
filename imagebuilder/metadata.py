"""One metadata schema for every image, on every cloud and in the local catalogue."""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

PREFIX = "imagebuilder-"
GCP_LABEL_VALUE = re.compile(r"[^a-z0-9_-]")
GCP_LABEL_MAX = 63  # characters of a GCE label value
# Values a GCE label cannot hold whole (a sha256 is 64 hex digits), kept in two labels: <key> the
# first half, <key>-2 the second; the image description keeps every value whole as well (gcp/store.py).
# The build key stays one label cut at 63 (its lookups filter on that label, on images made before).
GCP_SPLIT_FIELDS = frozenset({"sbom_sha256"})
GCP_SECOND_PART = "-2"
# Set last, on every copy of an image, once every publish step (copies, sharing, tags, SSM,
# replication) has succeeded. It is state, not build identity: it stays out of ImageMetadata
# (and out of the build key), so a record read back still equals the artifact's metadata.
PUBLISHED_TAG = PREFIX + "published"
PUBLISHED_VALUE = "true"
# Fields an image may lack and still be ours (made before they existed).
OPTIONAL_FIELDS = frozenset({"build_timestamp", "build_inputs", "variant", "sbom_sha256"})


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
    # A short digest per input of the build key (planner.encode_inputs): what `plan --changed`
    # compares to say why a cell is built again. Optional: images made before it have none.
    build_inputs: str = ""
    # The cloud's variant (config.py VARIANTS) the image is of; "" for the default cell, which
    # then carries no tag for it, as before variants existed.
    variant: str = ""
    # sha256 (hex) of the image's SBOM (imagebuilder/sbom.py) as the build wrote it; "" where the
    # build wrote none (images made before). 64 hex digits: GCE keeps it in two labels (to_gcp_labels).
    sbom_sha256: str = ""

    def to_tags(self) -> dict[str, str]:
        """As AWS tags, OpenStack properties, Azure tags and local catalogue records carry it."""
        return {tag_key(name): value for name, value in asdict(self).items() if value != ""}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ImageMetadata | None:
        """None unless every required key is there: images without our metadata are not ours."""
        values: dict[str, str] = {}
        for name, key, optional in _tag_fields():
            if key in tags:
                values[name] = str(tags[key])
            elif not optional:
                return None
        return cls(**values)

    def built_at(self) -> datetime | None:
        """The build time for ordering and naming (newest image, SSM parameter, gallery version):
        Packer's stamp, else unix seconds; None when neither, never an exception.

        Retention trusts Packer's stamp only, within a plausible range (parse_build_timestamp):
        it deletes by age."""
        stamp = self.build_timestamp
        if not (stamp.isascii() and stamp.isdigit()):
            return None
        try:
            if len(stamp) == 14:
                return datetime(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[8:10]),
                                int(stamp[10:12]), int(stamp[12:]), tzinfo=timezone.utc)
            return datetime.fromtimestamp(int(stamp), timezone.utc) if len(stamp) <= 11 else None
        except (ValueError, OverflowError, OSError):
            return None

    def to_gcp_labels(self) -> dict[str, str]:
        """GCE labels allow [a-z0-9_-] up to 63 characters; dots become dashes, and a GCP_SPLIT_FIELDS
        value too long for one label is cut in two (``from_gcp_labels`` joins them)."""
        split = {tag_key(name) for name in GCP_SPLIT_FIELDS}
        labels: dict[str, str] = {}
        for key, value in self.to_tags().items():
            if key in split and len(value) > GCP_LABEL_MAX:
                half = (len(value) + 1) // 2
                labels[key], labels[key + GCP_SECOND_PART] = gcp_label_value(value[:half]), gcp_label_value(value[half:])
            else:
                labels[key] = gcp_label_value(value)
        return labels

    @classmethod
    def from_gcp_labels(cls, labels: dict[str, str]) -> ImageMetadata | None:
        """The metadata GCE labels hold (label-safe values; split values joined again)."""
        joined = dict(labels)
        for name in GCP_SPLIT_FIELDS:
            key = tag_key(name)
            if key in joined and key + GCP_SECOND_PART in joined:
                joined[key] += joined.pop(key + GCP_SECOND_PART)
        return cls.from_tags(joined)


def parse_build_timestamp(stamp: str, now: datetime | None = None) -> datetime:
    """Packer's UTC "YYYYMMDDhhmmss", between 2015 and now plus a day; ValueError (the reason) otherwise.

    Nothing else is guessed at: unix seconds, milliseconds, ISO dates and empty values are
    refused, so that retention keeps such an image rather than misplacing it in time.
    """
    from imagebuilder.config import BUILD_TIME_EARLIEST, BUILD_TIME_FUTURE_SLACK

    if not stamp:
        raise ValueError("no build timestamp (expected UTC YYYYMMDDhhmmss)")
    if len(stamp) != 14 or not stamp.isascii() or not stamp.isdigit():
        raise ValueError(f"build timestamp '{stamp[:40]}' not understood (expected UTC YYYYMMDDhhmmss)")
    try:  # read without strptime: 10x faster over thousands of images
        built = datetime(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[8:10]), int(stamp[10:12]),
                         int(stamp[12:]), tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"build timestamp '{stamp}' not understood (no such date)") from None
    latest = (now or datetime.now(timezone.utc)) + BUILD_TIME_FUTURE_SLACK
    if not BUILD_TIME_EARLIEST <= built <= latest:
        raise ValueError(f"build timestamp '{stamp}' not understood ({built:%Y-%m-%d} is outside "
                         f"{BUILD_TIME_EARLIEST:%Y}..{latest:%Y-%m-%d})")
    return built


def is_published(tags: dict[str, str]) -> bool:
    """Whether an image's tags (labels, properties) say every publish step has completed."""
    return tags.get(PUBLISHED_TAG) == PUBLISHED_VALUE


@functools.cache
def _tag_fields() -> tuple[tuple[str, str, bool], ...]:
    """(field, tag key, optional) for every ImageMetadata field: read once, not per image listed."""
    return tuple((item.name, tag_key(item.name), item.name in OPTIONAL_FIELDS) for item in fields(ImageMetadata))


def tag_key(name: str) -> str:
    return PREFIX + ("version" if name == "version" else name.replace("_", "-"))


def gcp_label_value(value: str) -> str:
    return GCP_LABEL_VALUE.sub("-", value.lower())[:GCP_LABEL_MAX]


def metadata_for(cell: Any, version: str, git_commit: str) -> ImageMetadata:
    """The metadata of a planned cell (imagebuilder.planner.Cell)."""
    from imagebuilder.planner import encode_inputs

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
        build_inputs=encode_inputs(cell.inputs),
        variant=cell.variant or "",
    )
