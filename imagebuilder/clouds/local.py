"""The local catalogue: qemu images on this machine, one JSON record per image.

Layout under the catalogue directory ($IMAGEBUILDER_CATALOGUE, else the user's cache dir):

    records/<image id>.json    metadata (as tags), name, creation and deprecation times, file
    images/<image id>/<file>   the qcow2, hard-linked from the build output when it can be, else copied,
                               with the build's SBOM and provenance beside it when it wrote them
                               (and the other files of a local output: the raw disk's compressed
                               form and sha256 files)

Each local output keeps its images apart in the one catalogue: a record names the store that
wrote it ("output": the store's cloud; records without one are the qcow2's, "local"), and a store
lists only its own, so retention never takes a raw disk for an older copy of the qcow2.

The image id derives from the build key, so publishing the same build twice finds the
first record and changes nothing. Every write goes to a temporary file first and is
renamed into place: a reader never sees half a record or half an image.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from imagebuilder.artifact import Artifact
from imagebuilder.atomicfile import place_file, write_atomically
from imagebuilder.clouds import (ATTESTATION_FILES, CloudError, ImageFilter, ImageRecord, ImageStore, sort_newest_first,
                                 utcnow)
from imagebuilder.metadata import ImageMetadata
from imagebuilder.timeparse import as_utc

CATALOGUE_ENV = "IMAGEBUILDER_CATALOGUE"
RECORD_SCHEMA = 1
REGION = "local"
IMAGE_SUFFIXES = (".qcow2", ".img", ".raw", ".ova", ".gz")  # .gz: the MAAS root tarball (.tar.gz)
# The files a build writes beside its image (attest.py), by the record field that names them.
SIDE_FILES = ATTESTATION_FILES


def default_catalogue_dir() -> Path:
    configured = os.environ.get(CATALOGUE_ENV)
    return Path(configured) if configured else Path(user_cache_dir("imagebuilder")) / "catalogue"


def local_image_id(build_key: str) -> str:
    return f"local-{build_key[:16]}"


class LocalCatalogue(ImageStore):
    cloud = "local"  # also the records' "output": which store of the catalogue they belong to

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_catalogue_dir()

    @property
    def records_dir(self) -> Path:
        return self.root / "records"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    # -- the interface -------------------------------------------------------------------

    def publish(self, artifact: Artifact) -> dict[str, str]:
        image_id = local_image_id(artifact.build_key)
        existing = self._load(image_id)
        if existing is None or not Path(existing.extra["path"]).is_file():
            existing = self._catalogue(image_id, artifact)
        if existing is not None:
            self._complete(existing, artifact.metadata)
        return {REGION: image_id}

    def _catalogue(self, image_id: str, artifact: Artifact) -> ImageRecord | None:
        """The image file in place and its record written (without the published tag); None on a dry run."""
        source = image_file_of(artifact)
        if not self.change(REGION, image_id, f"catalogued from {source}"):
            return None
        target = self.images_dir / image_id / source.name
        place_file(source, target)
        side_files: dict[str, str] = {}
        for field, suffix in SIDE_FILES.items():
            found = next((Path(f) for f in artifact.files if f.endswith(suffix) and Path(f).is_file()), None)
            if found is not None:
                place_file(found, target.parent / found.name)
                side_files[field] = str((target.parent / found.name).relative_to(self.root))
        placed_sides = {Path(f).name for f in side_files.values()}
        others = [path for path in (Path(name) for name in artifact.files)
                  if path != source and path.is_file() and path.name not in placed_sides]
        for other in others:
            place_file(other, target.with_name(other.name))
        record = {
            "schema": RECORD_SCHEMA,
            "image_id": image_id,
            "name": artifact.image_name or source.stem,
            "created_at": utcnow().isoformat(),
            "deprecated_at": None,
            "tags": artifact.metadata.to_tags(),
            "file": str(target.relative_to(self.root)),
            "output": self.cloud,
            "other_files": [str(target.with_name(other.name).relative_to(self.root)) for other in others],
            "format": source.suffix.lstrip(".") or "raw",
            "size": target.stat().st_size,
            "cell": artifact.cell_id,
            "versions": artifact.versions,
            **side_files,
        }
        self._write(image_id, record)
        return self._load(image_id)

    def _complete(self, record: ImageRecord, metadata: ImageMetadata) -> None:
        """The record's metadata as the build's, then the published tag."""
        missing = {key: value for key, value in metadata.to_tags().items() if record.tags.get(key) != value}
        if missing and self.change(REGION, record.image_id, "tagged " + ", ".join(sorted(missing))):
            self.tag(record, missing)
        self.mark_published([record])

    def _reconcile(self, records: list[ImageRecord]) -> None:
        for record in records:
            if record.state != "available" or record.metadata is None:
                raise CloudError(f"local catalogue {self.root}: {record.image_id} has lost its file "
                                 f"{record.extra.get('path')} | fix: build the cell again with --force")
            self._complete(record, record.metadata)

    def list_images(self, filters: ImageFilter | None = None) -> list[ImageRecord]:
        filters = filters or ImageFilter()
        if not self.records_dir.is_dir():
            return []
        records = (self._load(path.stem) for path in sorted(self.records_dir.glob("*.json")))
        return sort_newest_first([r for r in records if r is not None and filters.matches(r)])

    def find_by_build_key(self, build_key: str, region: str | None = None) -> list[ImageRecord]:
        """One record read, not the whole catalogue: the image id derives from the build key."""
        if region not in (None, REGION):
            return []
        record = self._load(local_image_id(build_key))
        if record is None or record.metadata is None or record.metadata.build_key != build_key:
            return []
        return [record]

    def get(self, image_id: str) -> ImageRecord:
        record = self._load(image_id)
        if record is None:
            raise CloudError(f"local catalogue {self.root}: no image {image_id} "
                             "| fix: see 'imagebuilder images list --cloud {self.cloud}'")
        return record

    def tag(self, image: ImageRecord, tags: dict[str, str]) -> None:
        data = self._raw(image.image_id)
        data["tags"] = {**data["tags"], **{str(k): str(v) for k, v in tags.items()}}
        self._write(image.image_id, data)

    def copy_to_regions(self, image: ImageRecord, regions: Sequence[str]) -> dict[str, str]:
        others = [region for region in regions if region != REGION]
        if others:
            raise CloudError(f"local catalogue: cannot copy {image.image_id} to {', '.join(others)} "
                             "| fix: the local catalogue has one region, 'local'")
        return {REGION: image.image_id} if regions else {}

    def share(self, image: ImageRecord, principals: Sequence[str] = (), public: bool = False) -> None:
        if principals or public:
            raise CloudError(f"local catalogue: {image.image_id} cannot be shared "
                             "| fix: publish it to a cloud, or copy the file from 'images list --output json'")

    def deprecate(self, image: ImageRecord, when: datetime, end_of_life: datetime | None = None) -> None:
        data = self._raw(image.image_id)
        data["deprecated_at"] = as_utc(when).isoformat()
        self._write(image.image_id, data)

    def delete(self, image: ImageRecord) -> list[str]:
        record_path = self.records_dir / f"{image.image_id}.json"
        if not record_path.exists():
            raise CloudError(f"local catalogue {self.root}: no image {image.image_id} to delete")
        record_path.unlink()  # the record first: a half-deleted image is never listed
        shutil.rmtree(self.images_dir / image.image_id, ignore_errors=True)
        return [image.image_id]

    def in_use(self, image: ImageRecord) -> list[str] | None:
        return []  # nothing launches from the catalogue itself; VMs run from copies

    def check_access(self) -> None:
        """The catalogue directory exists (or can be made) and takes new files."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".preflight-"):
                pass
        except OSError as exc:
            raise CloudError(f"local catalogue {self.root} is not writable ({exc.strerror or exc}) "
                             f"| fix: make it writable or set {CATALOGUE_ENV} to a writable directory") from None

    # -- records -------------------------------------------------------------------------

    def _raw(self, image_id: str) -> dict[str, Any]:
        path = self.records_dir / f"{image_id}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CloudError(f"local catalogue {self.root}: no image {image_id} "
                             "| fix: see 'imagebuilder images list --cloud {self.cloud}'") from None
        except ValueError as exc:
            raise CloudError(f"{path}: not a catalogue record ({exc}) "
                             "| fix: delete the file and publish again") from None
        if not isinstance(data, dict) or data.get("schema") != RECORD_SCHEMA:
            raise CloudError(f"{path}: catalogue record schema {data.get('schema') if isinstance(data, dict) else '?'} "
                             f"is not {RECORD_SCHEMA} | fix: delete the file and publish again")
        return data

    def _load(self, image_id: str) -> ImageRecord | None:
        if not (self.records_dir / f"{image_id}.json").exists():
            return None
        data = self._raw(image_id)
        if data.get("output", LocalCatalogue.cloud) != self.cloud:
            return None  # another local output's image
        path = self.root / data["file"]
        others = [self.root / name for name in data.get("other_files", [])]
        return ImageRecord(
            cloud=self.cloud,
            region=REGION,
            image_id=data["image_id"],
            name=data["name"],
            created_at=datetime.fromisoformat(data["created_at"]),
            metadata=ImageMetadata.from_tags(data["tags"]),
            state="available" if all(p.is_file() for p in (path, *others)) else "missing",
            deprecated_at=datetime.fromisoformat(data["deprecated_at"]) if data.get("deprecated_at") else None,
            tags=dict(data["tags"]),
            extra={"path": str(path), "other_files": [str(other) for other in others],
                   "format": data.get("format", ""), "size": data.get("size", 0),
                   "cell": data.get("cell", ""), "versions": data.get("versions", {}),
                   **{field: str(self.root / data[field]) if data.get(field) else "" for field in SIDE_FILES}},
        )

    def _write(self, image_id: str, data: dict[str, Any]) -> None:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.records_dir / f"{image_id}.json", json.dumps(data, indent=2, sort_keys=True) + "\n")


def image_file_of(artifact: Artifact) -> Path:
    """The disk image an artifact produced: its first qcow2 (or img/raw) file."""
    candidates = [Path(f) for f in artifact.files] + [Path(v) for v in artifact.ids.values() if "/" in v]
    for path in candidates:
        if path.suffix in IMAGE_SUFFIXES and path.is_file():
            return path
    listed = ", ".join(str(p) for p in candidates) or "none"
    raise CloudError(f"{artifact.cell_id}: the artifact has no image file to catalogue (files: {listed}) "
                     "| fix: rebuild the cell; its qcow2 is missing")
