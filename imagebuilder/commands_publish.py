"""`imagebuilder publish`: bring the images that exist to what the matrix declares now.

For each selected cell, the images of its build key (found in its cloud, one per region)
are reconciled by the cell's store (``ImageStore.reconcile``): copies to missing regions,
launch permissions and sharing, tags and labels, the SSM parameter, Glance visibility and
members, GCP family deprecation, Azure target regions, and last the published tag. Packer
never runs. Each change is printed as one line; nothing is printed when all is in place.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from imagebuilder.cloudscope import strict_option
from imagebuilder.clouds import ImageRecord, ImageStore, store_for
from imagebuilder.config import DEFAULT_MATRIX
from imagebuilder.errors import UserError
from imagebuilder.pipeline import CatalogueLookup
from imagebuilder.planner import Cell
from imagebuilder.selection import resolved_baked_cells


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


@click.command("publish")
@click.option("-m", "--matrix", "matrix_path", type=click.Path(path_type=Path), default=DEFAULT_MATRIX,
              show_default=True, help="The build matrix.")
@click.option("--only", "only", multiple=True, metavar="GLOB",
              help="Only cells whose id matches this glob (repeatable), e.g. 'aws-*'.")
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--offline", is_flag=True,
              help="Find the images by the build keys of the base image references alone (as built with "
                   "'build --offline').")
@strict_option
def publish(matrix_path: Path, only: tuple[str, ...], dry_run: bool, offline: bool, strict: bool) -> None:
    """Bring the existing images of the cells to what the matrix declares now, without running Packer.

    The cells are selected, their bases resolved and their images found as `build` does; a cloud
    that cannot be reached is one warning and its cells wait (exit 3; --strict, or --only cells of
    that cloud alone, makes it an error)."""
    cells, scope = resolved_baked_cells(matrix_path, only, offline, strict)
    lookup = CatalogueLookup(scope)  # one listing per store, matched against every cell's key
    lookup.prefetch(cells)
    stores = StoreCache()
    unbuilt: list[str] = []
    failed: list[tuple[str, str]] = []
    for cell in cells:
        if lookup.unreachable(cell):  # its cloud was skipped with one warning: its cells wait
            continue
        try:
            changes = reconcile_cell(stores(cell), cell, lookup.records(cell), dry_run=dry_run)
        except UserError as error:  # one cell's failure must not stop the others
            failed.append((cell.id, str(error)))
            continue
        if changes is None:
            unbuilt.append(cell.id)
            continue
        for line in changes:
            click.echo(("would: " if dry_run else "") + line)
    _report(unbuilt, failed)
    scope.exit()


def _report(unbuilt: list[str], failed: list[tuple[str, str]]) -> None:
    if unbuilt:
        click.echo(f"imagebuilder: {len(unbuilt)} cells have no image yet, nothing to publish "
                   f"(build them with 'imagebuilder build'): {', '.join(unbuilt)}", err=True)
    for cell_id, message in failed:
        click.echo(f"imagebuilder: {cell_id}: {message}", err=True)
    if failed:
        click.echo(f"imagebuilder: {len(failed)} cells could not be published; run publish again once fixed",
                   err=True)
        sys.exit(1)
