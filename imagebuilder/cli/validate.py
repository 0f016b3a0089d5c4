"""`imagebuilder validate`: render the cells and run `packer validate` on each."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from imagebuilder import render
from imagebuilder.cli.common import packer_version as resolve_packer_version
from imagebuilder.cli.options import rendering_options
from imagebuilder.selection import resolved_baked_cells


@click.command("validate")
@rendering_options
def validate_command(matrix_path: Path, only: tuple[str, ...], output_dir: Path, packer_version: str | None,
                     offline: bool, strict: bool) -> None:
    """Render the cells and run `packer validate` on each."""
    cells, scope = resolved_baked_cells(matrix_path, only, offline, strict)
    version = resolve_packer_version(packer_version)
    rendered_cells = render.render_cells(cells, output_dir, version)
    # One `packer validate` per cell, a few at once (each is a process of its own); reported in plan order.
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        results = list(pool.map(lambda rendered: render.validate(rendered, version), rendered_cells))
    failed = 0
    for rendered, result in zip(rendered_cells, results):
        failed += not result.ok
        if result.parsed_only:
            click.echo(f"parsed  {rendered.cell.id}  ({result.output})")
            continue
        click.echo(f"{'ok' if result.ok else 'FAILED'}  {rendered.cell.id}")
        if not result.ok:
            click.echo("    " + result.output.replace("\n", "\n    "), err=True)
    click.echo(f"{len(cells) - failed} valid, {failed} invalid")
    scope.exit(failed=bool(failed))
