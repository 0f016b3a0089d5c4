"""Which cells a command works on: one selection for build, publish, render and validate.

The matrix is planned with the --only globs; the baked cells are kept (sysext cells run the stock
image and are built and published with 'imagebuilder sysext build'); the cloud the user named
(the selection is all of one cloud) makes that cloud's failure an error, not a warning.
"""

from __future__ import annotations

from pathlib import Path

import click

from imagebuilder import baseimages
from imagebuilder.cloudscope import CloudScope
from imagebuilder.config import load_matrix
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell, plan


def planned_cells(matrix_path: Path, only: tuple[str, ...]) -> list[Cell]:
    return plan(load_matrix(matrix_path), list(only) or None)


def require_baked(cells: list[Cell], only: tuple[str, ...]) -> list[Cell]:
    """The cells Packer bakes; sysext cells run the stock image and need no build of their own."""
    if not cells:
        raise UserError(f"--only {' '.join(only)}: no cell of the matrix matches "
                        "(see 'imagebuilder plan' for the cell ids)")
    baked = [cell for cell in cells if cell.strategy == "bake"]
    sysext_cells = len(cells) - len(baked)
    if sysext_cells:
        click.echo(f"{sysext_cells} sysext cells use the stock OS image: build their Kubernetes with "
                   "'imagebuilder sysext build'", err=True)
    if not baked:
        raise UserError(f"--only {' '.join(only)}: every matching cell uses the sysext strategy "
                        "(build it with 'imagebuilder sysext build --k8s MINOR')")
    return baked


def baked_cells(matrix_path: Path, only: tuple[str, ...]) -> list[Cell]:
    """The selected baked cells of the matrix (build and publish)."""
    return require_baked(planned_cells(matrix_path, only), only)


def explicit_cloud_of(cells: list[Cell], only: tuple[str, ...]) -> frozenset[str]:
    """The cloud the user asked for: the selected cells (the matrix, or --only) are all of one cloud."""
    named = {cell.cloud for cell in cells}
    return frozenset(named) if len(named) == 1 else frozenset()


def resolved(cells: list[Cell], matrix_path: Path, offline: bool, scope: CloudScope) -> list[Cell]:
    """The cells with their base images resolved (baseimages.py); --offline says so on stderr."""
    if offline:
        click.echo(baseimages.OFFLINE_NOTE, err=True)
        return cells
    return baseimages.resolve_cells(cells, load_matrix(matrix_path), baseimages.Resolver(scope=scope))


def resolved_baked_cells(matrix_path: Path, only: tuple[str, ...], offline: bool,
                         strict: bool) -> tuple[list[Cell], CloudScope]:
    """The selected baked cells, their bases resolved; a cloud that cannot be asked is skipped (one
    warning, its cells left out) unless --strict or the selection names it alone."""
    cells = baked_cells(matrix_path, only)
    scope = CloudScope(strict=strict, explicit=explicit_cloud_of(cells, only))
    cells = [cell for cell in resolved(cells, matrix_path, offline, scope) if cell.cloud not in scope.skipped]
    return cells, scope
