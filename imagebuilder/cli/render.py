"""`imagebuilder render`: one self-contained Packer HCL2 directory per cell."""

from __future__ import annotations

from pathlib import Path

import click

from imagebuilder import render
from imagebuilder.cli.common import packer_version as resolve_packer_version
from imagebuilder.cli.options import rendering_options
from imagebuilder.selection import resolved_baked_cells


@click.command("render")
@rendering_options
def render_command(matrix_path: Path, only: tuple[str, ...], output_dir: Path, packer_version: str | None,
                   offline: bool, strict: bool) -> None:
    """Write one self-contained Packer HCL2 directory per cell."""
    cells, scope = resolved_baked_cells(matrix_path, only, offline, strict)
    for rendered in render.render_cells(cells, output_dir, resolve_packer_version(packer_version)):
        click.echo(str(rendered.directory))
    scope.exit()
