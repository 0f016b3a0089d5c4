"""`imagebuilder publish`: bring the images that exist to what the matrix declares now.

For each selected cell, the images of its build key (found in its cloud, one per region)
are reconciled by the cell's store (``ImageStore.reconcile``): each cloud's store copies to
missing regions, shares, tags and deprecates as its settings say, and sets the published tag
last. Packer never runs. Each change is printed as one line; nothing is printed when all is
in place."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from imagebuilder.cli.options import dry_run_option, matrix_option, offline_option, only_option, strict_option
from imagebuilder.clouds import not_managed_notice, unmanaged_clouds
from imagebuilder.errors import UserError
from imagebuilder.pipeline import CatalogueLookup
from imagebuilder.publishing import StoreCache, reconcile_cell
from imagebuilder.selection import resolved_baked_cells


@click.command("publish")
@matrix_option()
@only_option()
@dry_run_option(help="Print what would change; change nothing.")
@offline_option(help="Find the images by the build keys of the base image references alone (as built with "
                     "'build --offline').")
@strict_option()
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
    unmanaged = sorted({cell.cloud for cell in cells} & set(unmanaged_clouds()))
    for cloud in unmanaged:
        click.echo(not_managed_notice(cloud, "publish"), err=True)
    for cell in [cell for cell in cells if cell.cloud not in unmanaged]:
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
