"""``imagebuilder targets [-m MATRIX] [--format table|json]``: each kubernetes-sigs/image-builder
make target name the matrix provides, with the cells it builds (``make build-<target>`` builds them)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from imagebuilder import targets as target_names
from imagebuilder.cli.common import print_json
from imagebuilder.cli.options import format_option, matrix_option
from imagebuilder.config import load_matrix
from imagebuilder.planner import plan


@click.command("targets")
@matrix_option()
@format_option(help="A table in a terminal, JSON otherwise.")
def targets_command(matrix_path: Path, output_format: str | None) -> None:
    """image-builder's make target names the matrix provides, each with the cell ids it builds."""
    found = target_names.targets(plan(load_matrix(matrix_path)))
    if (output_format or ("table" if sys.stdout.isatty() else "json")) == "json":
        print_json([{"target": name, "cells": cells} for name, cells in found.items()])
        return
    table = Table("target", "cells", box=None)
    for name, cells in found.items():
        table.add_row(name, " ".join(cells))
    Console(highlight=False, soft_wrap=True).print(table)
