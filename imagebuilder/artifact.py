"""The artifact record: what one cell's build produced, parsed from Packer's manifest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagebuilder.clouds import registry
from imagebuilder.errors import UserError
from imagebuilder.metadata import ImageMetadata


@dataclass(frozen=True)
class Artifact:
    cell_id: str
    cloud: str
    build_key: str
    image_name: str
    metadata: ImageMetadata
    ids: dict[str, str]  # region (or "local") -> the cloud's image id
    files: list[str] = field(default_factory=list)  # local files, e.g. the qcow2
    versions: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        return cls(**{**data, "metadata": ImageMetadata(**data["metadata"])})


def from_packer_manifest(manifest_path: Path, cloud: str, started_at: float = 0.0,
                         finished_at: float = 0.0) -> Artifact:
    """The last build in a Packer manifest, whose custom_data we wrote at render time."""
    try:
        manifest = json.loads(manifest_path.read_text())
        build = manifest["builds"][-1]
        custom = build["custom_data"]
        metadata = ImageMetadata.from_tags(json.loads(custom["metadata"]))
        versions = json.loads(custom["versions"])
        if metadata is None:
            raise ValueError("custom_data.metadata lacks imagebuilder keys")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"{manifest_path}: not a manifest of an imagebuilder build ({exc.__class__.__name__}: {exc})")
    return Artifact(
        cell_id=metadata.cell,
        cloud=cloud,
        build_key=metadata.build_key,
        image_name=custom.get("image_name", ""),
        metadata=metadata,
        ids=registry.get(cloud).artifact_ids(build.get("builder_type", ""), build.get("artifact_id", "")),
        # Packer names them relative to its directory, the manifest's: absolute here, whatever `-o` was
        files=[str(Path(manifest_path.parent, f["name"]).absolute()) for f in build.get("files") or []],
        versions=versions,
        started_at=started_at,
        finished_at=finished_at,
    )
