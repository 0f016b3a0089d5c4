"""`imagebuilder versions update`: refresh the pinned versions file (versions.lock.yaml)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from imagebuilder import rebuilds, versions_update
from imagebuilder.cli.options import dry_run_option, matrix_option
from imagebuilder.config import LoadedMatrix, load_matrix
from imagebuilder.errors import UserError
from imagebuilder.versions import DEFAULT_VERSIONS_FILE


@click.group("versions")
def versions_group() -> None:
    """The pinned versions file (versions.lock.yaml)."""


@versions_group.command("update")
@click.option("--versions-file", type=click.Path(path_type=Path), default=Path(DEFAULT_VERSIONS_FILE),
              show_default=True)
@click.option("--minor", "minors", multiple=True, metavar="1.35",
              help="Only these minors (repeatable); a minor not in the file is added.")
@click.option("--mirror", "mirrors", multiple=True, metavar="COMPONENT=URL", envvar="IMAGEBUILDER_VERSIONS_MIRRORS",
              help="Read from a mirror instead of the upstream release site (repeatable; or "
              "$IMAGEBUILDER_VERSIONS_MIRRORS, space-separated); registry=HOST[:PORT] asks an image "
              "registry mirror for the image digests.")
@click.option("--pin", "pins", multiple=True, metavar="COMPONENT=VERSION",
              help="Move a component (containerd, runc, crictl, cni_plugins, pause) to this version.")
@click.option("--add-newest-minor", is_flag=True,
              help="Also add the newest upstream minor (stable.txt) when the file lacks it; it is built once "
              "the matrix names it.")
@dry_run_option(help="Show the changes; write nothing.")
@matrix_option()
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a Markdown report: what moved and the cells of the matrix it rebuilds.")
@click.option("--github-output", is_flag=True,
              help="Append changed, auto_merge, cells and title to the file $GITHUB_OUTPUT names.")
def versions_update_command(versions_file: Path, minors: tuple[str, ...], mirrors: tuple[str, ...],
                            pins: tuple[str, ...], add_newest_minor: bool, dry_run: bool, matrix_path: Path,
                            report_path: Path | None, github_output: bool) -> None:
    """Refresh patch versions and sha256 sums from the release sites; review the diff, then commit."""
    loaded = None
    if github_output and not os.environ.get("GITHUB_OUTPUT"):
        raise UserError("--github-output: $GITHUB_OUTPUT is not set; it is set inside a GitHub Actions step")
    if report_path is not None and not report_path.parent.is_dir():
        raise UserError(f"--report {report_path}: the directory {report_path.parent} does not exist")
    if report_path is not None or github_output:
        loaded = _matrix_of(matrix_path, versions_file)
    report = versions_update.update_versions(
        versions_file, list(minors) or None, versions_update.parse_assignments(mirrors, "--mirror"),
        write=not dry_run, pins=versions_update.parse_assignments(pins, "--pin"), add_newest=add_newest_minor)
    for line in report.lines():
        click.echo(line)
    if loaded is None:
        return
    moved: list[rebuilds.Rebuild] = []
    if report.changed and report.before is not None and report.after is not None:
        moved = rebuilds.rebuilds_for_lock(loaded.model_copy(update={"versions": report.after}), report.before)
    auto_merge = loaded.matrix.auto_merge_patches and report.changed and not report.suspicious
    if report_path is not None:
        report_path.write_text(versions_update.markdown_report(report, moved, matrix_path.name, auto_merge))
    if github_output:
        _github_output({"changed": str(report.changed).lower(), "auto_merge": str(auto_merge).lower(),
                        "cells": str(len(moved)), "title": versions_update.title(report)})


def _matrix_of(matrix_path: Path, versions_file: Path) -> LoadedMatrix:
    """The matrix whose cells a versions update rebuilds; it must read the file being updated."""
    loaded = load_matrix(matrix_path)
    if loaded.versions_path != versions_file.resolve():
        raise UserError(f"{matrix_path}: versions_file is {loaded.versions_path}, not the {versions_file} being "
                        f"updated; pass --versions-file {loaded.versions_path}")
    return loaded


def _github_output(values: dict[str, str]) -> None:
    with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as stream:
        for name, value in values.items():
            stream.write(f"{name}={value.replace(chr(10), ' ')}\n")
