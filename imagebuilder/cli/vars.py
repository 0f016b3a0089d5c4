"""`imagebuilder vars CELL`: a cell's Ansible variables."""

from __future__ import annotations

from pathlib import Path

import click

from imagebuilder import render
from imagebuilder.cli.common import print_json
from imagebuilder.cli.options import matrix_option, offline_option
from imagebuilder.cloudscope import CloudScope
from imagebuilder.errors import UserError
from imagebuilder.selection import planned_cells, resolved


@click.command("vars")
@matrix_option()
@click.argument("cell_id")
@offline_option()
def vars_command(matrix_path: Path, cell_id: str, offline: bool) -> None:
    """Print a cell's Ansible variables (for `ansible-playbook ansible/node.yml -e @vars.json`)."""
    cells = planned_cells(matrix_path, (cell_id,))
    if not cells:
        raise UserError(f"{cell_id}: no such cell (see 'imagebuilder plan' for the cell ids)")
    cells = resolved(cells, matrix_path, offline, CloudScope(explicit=frozenset({cells[0].cloud})))
    print_json(render.ansible_vars(cells[0]))
