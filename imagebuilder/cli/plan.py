"""`imagebuilder plan`: the matrix expanded into build cells, with their ids and build keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from imagebuilder import github, pipeline, rebuilds
from imagebuilder.cli.common import catalogue_lookup, print_json, stdout
from imagebuilder.cli.options import format_option, matrix_option, offline_option, only_option, strict_option
from imagebuilder.cli.sysext import print_comparison
from imagebuilder.cloudscope import CloudScope
from imagebuilder.config import load_matrix
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell
from imagebuilder.selection import explicit_cloud_of, planned_cells, resolved
from imagebuilder.versions import load_versions

PLAN_FORMATS = ("table", "json", "github-matrix", "github-shards", "clouds", "make")


@click.command("plan")
@matrix_option()
@only_option()
@format_option(PLAN_FORMATS,
               help="Output format; a table in a terminal, JSON otherwise. github-matrix: one GitHub Actions "
                    "matrix (at most 256 cells); github-shards: a matrix of shards, each with its own matrix; "
                    "clouds: the clouds of the cells, as a JSON list.")
@click.option("--strategy", type=click.Choice(["bake", "sysext"]), default=None,
              help="Only cells of this strategy: bake (Packer builds an image) or sysext (stock image).")
@click.option("--changed", is_flag=True,
              help="Only cells whose build key is not yet an image in their catalogue (the cloud itself).")
@strict_option()
@click.option("--compare", is_flag=True,
              help="Compare how many images baking and sysext build and store for the whole matrix.")
@click.option("--diff-against", "old_lock", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="OLD_LOCK", help="Only cells whose build key differs from the one this older "
              "versions file gives them (offline), with what moved.")
@offline_option()
def plan_command(matrix_path: Path, only: tuple[str, ...], output_format: str | None, strategy: str | None,
                 changed: bool, strict: bool, compare: bool, old_lock: Path | None, offline: bool) -> None:
    """Expand the matrix into build cells with their ids and build keys."""
    reasons: dict[str, tuple[str, ...]] = {}
    if old_lock is not None:
        if not old_lock.exists() or old_lock.is_dir():
            raise UserError(f"--diff-against {old_lock}: no such file; name a versions.lock.yaml to compare with")
        moved = rebuilds.rebuilds_for_lock(load_matrix(matrix_path), load_versions(old_lock), list(only) or None)
        cells, reasons = [r.cell for r in moved], {r.cell.id: r.reasons for r in moved}
    else:
        cells = planned_cells(matrix_path, only)
    if compare:
        print_comparison(cells, "json" if output_format == "json" else "table")
        return
    if strategy is not None:
        cells = [cell for cell in cells if cell.strategy == strategy]
    scope = CloudScope(strict=strict, explicit=explicit_cloud_of(cells, only))
    # The clouds of the cells (`--format clouds`, `make`) need no build keys, nor credentials.
    if old_lock is None and output_format not in ("clouds", "make"):
        cells = [cell for cell in resolved(cells, matrix_path, offline, scope) if cell.cloud not in scope.skipped]
    if changed:
        lookup = catalogue_lookup(matrix_path, scope)
        cells = pipeline.changed_cells(cells, lookup)
        reasons = {cell.id: reasons.get(cell.id, ()) or lookup.why(cell) for cell in cells}
    output_format = output_format or ("table" if sys.stdout.isatty() else "json")
    if output_format == "json":
        print_json([{**cell.summary(), **({"reasons": list(reasons[cell.id])} if old_lock or changed else {})}
                    for cell in cells])
    elif output_format == "github-matrix":
        click.echo(json.dumps(github.job_matrix(cells), separators=(",", ":")))
    elif output_format == "github-shards":
        click.echo(json.dumps(github.shards(cells), separators=(",", ":")))
    elif output_format == "clouds":
        click.echo(json.dumps(github.clouds_of(cells)))
    elif output_format == "make":
        for target in dict.fromkeys(f"build-{cell.cloud}-{cell.os}" for cell in cells):
            click.echo(target)
    else:
        stdout.print(plan_table(cells, reasons if old_lock is not None or changed else None))
    scope.exit()


def plan_table(cells: list[Cell], reasons: dict[str, tuple[str, ...]] | None = None) -> Table:
    table = Table(title=f"{len(cells)} cells")
    for column in ("id", "kubernetes", "arch", "strategy", "image name", "build key", *(("why",) if reasons else ())):
        table.add_column(column)
    for cell in cells:
        why = ("; ".join(reasons.get(cell.id, ())),) if reasons else ()
        table.add_row(cell.id, cell.kubernetes_version, cell.arch, cell.strategy, cell.image_name,
                      cell.build_key[:12], *why)
    return table
