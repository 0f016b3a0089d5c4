"""Publishing the images that exist: one build's artifact to its store, and a cell's images brought to
what the matrix declares now (``ImageStore.reconcile``). `build` and `publish` share these."""

from __future__ import annotations

import json
from typing import Any

from imagebuilder.artifact import Artifact
from imagebuilder.clouds import ImageRecord, ImageStore, store_for
from imagebuilder.planner import Cell


def publish_artifact(artifact: Artifact, cell_settings: Any = None) -> dict[str, str]:
    """Publish a build's artifact where its cloud keeps images; region -> image id.

    ``cell_settings`` is the cell's cloud settings (``Cell.settings`` or a settings model).
    Idempotent: a second call for the same build key finds what the first published.
    """
    return store_for(artifact.cloud, cell_settings).publish(artifact)


class StoreCache:
    """One store per (cloud, settings): cells of one cloud share its clients and connections."""

    def __init__(self) -> None:
        self._stores: dict[tuple[str, str], ImageStore] = {}

    def __call__(self, cell: Cell) -> ImageStore:
        key = (cell.cloud, json.dumps(cell.settings, sort_keys=True, default=str))
        if key not in self._stores:
            self._stores[key] = store_for(cell.cloud, cell.settings)
        return self._stores[key]


def reconcile_cell(store: ImageStore, cell: Cell, records: list[ImageRecord] | None = None,
                   dry_run: bool = False) -> list[str] | None:
    """The changes that bring the cell's images to its settings; None when the cell has no image yet."""
    found = records if records is not None else store.find_by_build_key(cell.build_key)
    if not found:
        return None
    return store.reconcile(found, dry_run=dry_run)
