"""Helpers the verbs share: JSON and table output, the catalogue lookup, the Packer version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import click
from rich.console import Console

from imagebuilder import packer, pipeline
from imagebuilder.clouds import not_managed_notice, unmanaged_clouds
from imagebuilder.cloudscope import CloudScope
from imagebuilder.config import load_matrix

stdout = Console(highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def say_unmanaged(declared: Iterable[str]) -> None:
    """One line on stderr per declared cloud whose images are not managed yet; the others go on."""
    for name in declared:
        if name in unmanaged_clouds():
            click.echo(not_managed_notice(name), err=True)


def catalogue_lookup(matrix_path: Path, scope: CloudScope) -> pipeline.CatalogueLookup:
    return pipeline.CatalogueLookup(scope, rebuild_after_days=load_matrix(matrix_path).matrix.rebuild_after_days)


def packer_version(requested: str | None) -> packer.Version | None:
    return packer.parse_version(requested) if requested else packer.installed_version()
