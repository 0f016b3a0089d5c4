"""`imagebuilder build`: render the selected cells and run Packer on those whose image does not exist yet."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from imagebuilder import pipeline, preflight, progress
from imagebuilder.cli.common import catalogue_lookup
from imagebuilder.cli.options import (dry_run_option, matrix_option, offline_option, only_option, output_dir_option,
                                      strict_option)
from imagebuilder.cloudscope import CloudScope
from imagebuilder.planner import Cell
from imagebuilder.selection import explicit_cloud_of, planned_cells, require_baked, resolved

PREFLIGHT_EXIT = 2  # as a UserError: nothing ran


@click.command("build")
@matrix_option()
@only_option()
@output_dir_option()
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Cells built at once, over all clouds (each cloud also has its max_parallel).")
@click.option("--force", is_flag=True, help="Build cells whose build key already exists as an image.")
@dry_run_option(help="Show what would be built and skipped; run nothing.")
@click.option("--no-publish", is_flag=True, help="Build (and boot-test) only; publish nothing.")
@click.option("--skip-preflight", is_flag=True,
              help="Do not check the download mirrors and cloud credentials before building.")
@strict_option()
@offline_option()
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
    lookup = catalogue_lookup(matrix_path, scope)
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
