"""The `imagebuilder` command: a thin layer over config -> plan -> render -> build -> publish -> retain."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from imagebuilder import __version__, baseimages, github, packer, pipeline, preflight, procs, progress, rebuilds, render, versions_update
from imagebuilder.cloudscope import CloudScope, strict_option
from imagebuilder.config import DEFAULT_MATRIX, LoadedMatrix, load_matrix
from imagebuilder.commands_images import images
from imagebuilder.commands_prune import prune
from imagebuilder.commands_publish import publish
from imagebuilder.commands_sysext import print_comparison, sysext
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell
from imagebuilder.selection import (explicit_cloud_of, planned_cells, require_baked, resolved,
                                     resolved_baked_cells)
from imagebuilder.versions import DEFAULT_VERSIONS_FILE, load_versions

stdout = Console(highlight=False, soft_wrap=True)

matrix_option = click.option(
    "-m", "--matrix", "matrix_path", type=click.Path(path_type=Path), default=DEFAULT_MATRIX,
    show_default=True, help="The build matrix.",
)
only_option = click.option(
    "--only", "only", multiple=True, metavar="GLOB",
    help="Only cells whose id matches this glob (repeatable), e.g. 'qemu-debian-12-*'.",
)


offline_option = click.option(
    "--offline", is_flag=True,
    help="Plan from the base image references alone: ask no cloud or vendor site which image they name "
         "today (the build keys then differ from resolved ones).")


def _lookup(matrix_path: Path, scope: CloudScope) -> pipeline.CatalogueLookup:
    return pipeline.CatalogueLookup(scope, rebuild_after_days=load_matrix(matrix_path).matrix.rebuild_after_days)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imagebuilder")
def cli() -> None:
    """Build, publish and retire Kubernetes node images from one matrix."""


PLAN_FORMATS = ("table", "json", "github-matrix", "github-shards", "clouds", "make")


@cli.command("plan")
@matrix_option
@only_option
@click.option("--format", "output_format", type=click.Choice(PLAN_FORMATS), default=None,
              help="Output format; a table in a terminal, JSON otherwise. github-matrix: one GitHub Actions "
                   "matrix (at most 256 cells); github-shards: a matrix of shards, each with its own matrix; "
                   "clouds: the clouds of the cells, as a JSON list.")
@click.option("--strategy", type=click.Choice(["bake", "sysext"]), default=None,
              help="Only cells of this strategy: bake (Packer builds an image) or sysext (stock image).")
@click.option("--changed", is_flag=True,
              help="Only cells whose build key is not yet an image in their catalogue (the cloud itself).")
@strict_option
@click.option("--compare", is_flag=True,
              help="Compare how many images baking and sysext build and store for the whole matrix.")
@click.option("--diff-against", "old_lock", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="OLD_LOCK", help="Only cells whose build key differs from the one this older "
              "versions file gives them (offline), with what moved.")
@offline_option
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
        lookup = _lookup(matrix_path, scope)
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
        stdout.print(_plan_table(cells, reasons if old_lock is not None or changed else None))
    scope.exit()


def _plan_table(cells: list[Cell], reasons: dict[str, tuple[str, ...]] | None = None) -> Table:
    table = Table(title=f"{len(cells)} cells")
    for column in ("id", "kubernetes", "arch", "strategy", "image name", "build key", *(("why",) if reasons else ())):
        table.add_column(column)
    for cell in cells:
        why = ("; ".join(reasons.get(cell.id, ())),) if reasons else ()
        table.add_row(cell.id, cell.kubernetes_version, cell.arch, cell.strategy, cell.image_name,
                      cell.build_key[:12], *why)
    return table


output_dir_option = click.option(
    "-o", "--output", "output_dir", type=click.Path(path_type=Path), default=Path("build"), show_default=True,
    help="Where each cell's Packer directory is written.",
)
packer_version_option = click.option(
    "--packer-version", default=None, metavar="X.Y.Z",
    help="Emit templates for this Packer version; default: the one on PATH.",
)


def _packer_version(requested: str | None) -> packer.Version | None:
    return packer.parse_version(requested) if requested else packer.installed_version()


@cli.command("render")
@matrix_option
@only_option
@output_dir_option
@packer_version_option
@offline_option
@strict_option
def render_command(matrix_path: Path, only: tuple[str, ...], output_dir: Path, packer_version: str | None,
                   offline: bool, strict: bool) -> None:
    """Write one self-contained Packer HCL2 directory per cell."""
    cells, scope = resolved_baked_cells(matrix_path, only, offline, strict)
    for rendered in render.render_cells(cells, output_dir, _packer_version(packer_version)):
        click.echo(str(rendered.directory))
    scope.exit()


@cli.command("validate")
@matrix_option
@only_option
@output_dir_option
@packer_version_option
@offline_option
@strict_option
def validate_command(matrix_path: Path, only: tuple[str, ...], output_dir: Path, packer_version: str | None,
                     offline: bool, strict: bool) -> None:
    """Render the cells and run `packer validate` on each."""
    cells, scope = resolved_baked_cells(matrix_path, only, offline, strict)
    failed = 0
    for rendered in render.render_cells(cells, output_dir, _packer_version(packer_version)):
        result = packer.validate(rendered.directory)
        failed += not result.ok
        click.echo(f"{'ok' if result.ok else 'FAILED'}  {rendered.cell.id}")
        if not result.ok:
            click.echo("    " + result.output.replace("\n", "\n    "), err=True)
    click.echo(f"{len(cells) - failed} valid, {failed} invalid")
    scope.exit(failed=bool(failed))


@cli.command("build")
@matrix_option
@only_option
@output_dir_option
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Cells built at once, over all clouds (each cloud also has its max_parallel).")
@click.option("--force", is_flag=True, help="Build cells whose build key already exists as an image.")
@click.option("--dry-run", is_flag=True, help="Show what would be built and skipped; run nothing.")
@click.option("--no-publish", is_flag=True, help="Build (and boot-test) only; publish nothing.")
@click.option("--skip-preflight", is_flag=True,
              help="Do not check the download mirrors and cloud credentials before building.")
@strict_option
@offline_option
def build_command(matrix_path: Path, only: tuple[str, ...], output_dir: Path, jobs: int, force: bool,
                  dry_run: bool, no_publish: bool, skip_preflight: bool, strict: bool, offline: bool) -> None:
    """Render the selected cells and run Packer on the ones whose image does not exist yet.

    A cloud that cannot be reached is one warning line and its cells are not built; the others
    build and the exit status is 3 (--strict, or --only cells of that cloud alone, makes it an error)."""
    cells = require_baked(planned_cells(matrix_path, only), only)
    scope = CloudScope(strict=strict, explicit=explicit_cloud_of(cells, only))
    # A cloud that cannot resolve its bases is skipped here; its cells are reported unreachable.
    cells = resolved(cells, matrix_path, offline, scope)
    options = pipeline.BuildOptions(output_dir=output_dir, jobs=jobs, force=force, dry_run=dry_run,
                                    publish=not no_publish)
    # What exists first: a nightly no-op checks no download of the cells it skips.
    lookup = _lookup(matrix_path, scope)
    job_list = pipeline.look_up_jobs(cells, options, lookup)
    if not skip_preflight:
        to_build = [job.cell for job in job_list if job.state.value == "queued"]
        kept = {cell.id for cell in _preflight(to_build, matrix_path, dry_run, scope)} if to_build else set()
        for job in job_list:
            if job.state.value == "queued" and job.cell.id not in kept:
                job.state, job.error = job.state.UNREACHABLE, scope.skipped.get(job.cell.cloud, "")
    pipeline.render_jobs(job_list, options)
    if dry_run:
        for job in job_list:
            action = (f"publish only (built: {job.existing})" if job.state is job.state.PUBLISH_ONLY and
                      not no_publish else
                      f"skip (exists: {job.existing})" if job.existing else
                      "skip (cloud unreachable)" if job.state.value == "unreachable" else
                      f"build ({_why(lookup, job.cell, force)})")
            click.echo(f"{action:<40} {job.cell.id}")
        scope.exit()
        return
    try:
        for job in job_list:
            if job.state.value == "queued":
                click.echo(f"build {job.cell.id}: {_why(lookup, job.cell, force)}")
        pipeline.run_jobs(job_list, options, progress.make_reporter())
    except KeyboardInterrupt:
        progress.print_summary(job_list)
        click.echo("imagebuilder: interrupted; the running builds cleaned up", err=True)
        sys.exit(130)
    progress.print_summary(job_list)
    failed = [job for job in job_list if job.state.value == "failed"]
    if failed:
        click.echo(f"imagebuilder: {len(failed)} of {len(job_list)} cells failed; logs in "
                   f"{output_dir}/<cell>/build.log", err=True)
    scope.exit(failed=bool(failed))


def _why(lookup: pipeline.CatalogueLookup, cell: Cell, force: bool) -> str:
    """Why build builds this cell: what moved since its newest image, "new", "age"; or --force."""
    return "forced" if force else ", ".join(lookup.why(cell)) or "build key"


PREFLIGHT_EXIT = 2  # as a UserError: nothing ran


def _preflight(cells: list[Cell], matrix_path: Path, dry_run: bool,
               scope: CloudScope) -> list[Cell]:
    """Check the selected cells' downloads and clouds; one line per problem on stderr.

    A failed check ends `build` here; `build --dry-run` only reports it, with its plan.
    """
    report = preflight.run(cells, str(matrix_path))
    for problem in [p for p in report.problems if p.subject in report.clouds]:
        scope.skip(problem.subject, problem.line())  # an unreachable cloud: its cells wait, the others go on
        report.problems.remove(problem)
    cells = [cell for cell in cells if cell.cloud not in scope.skipped]
    for line in report.lines():
        click.echo(f"imagebuilder: {line}", err=True)
    if dry_run:
        click.echo(report.summary())
    elif not report.ok:
        click.echo(f"imagebuilder: preflight found {preflight.problems(len(report.problems))}; nothing was built "
                   "(--skip-preflight builds anyway)", err=True)
        sys.exit(PREFLIGHT_EXIT)
    return cells


@cli.command("vars")
@matrix_option
@click.argument("cell_id")
@offline_option
def vars_command(matrix_path: Path, cell_id: str, offline: bool) -> None:
    """Print a cell's Ansible variables (for `ansible-playbook ansible/node.yml -e @vars.json`)."""
    cells = planned_cells(matrix_path, (cell_id,))
    if not cells:
        raise UserError(f"{cell_id}: no such cell (see 'imagebuilder plan' for the cell ids)")
    cells = resolved(cells, matrix_path, offline, CloudScope(explicit=frozenset({cells[0].cloud})))
    print_json(render.ansible_vars(cells[0]))


@cli.group("versions")
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
@click.option("--dry-run", is_flag=True, help="Show the changes; write nothing.")
@matrix_option
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


cli.add_command(sysext)
cli.add_command(images)
cli.add_command(prune)
cli.add_command(publish)


def main() -> None:
    procs.interrupt_on_signals()
    try:
        cli.main(standalone_mode=False)
    except UserError as error:
        click.echo(f"imagebuilder: {error}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("imagebuilder: aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("imagebuilder: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
