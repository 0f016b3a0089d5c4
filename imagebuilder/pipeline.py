"""The build pipeline for a set of cells: render, skip what exists, build, then each target's
own steps (the qemu target boot-tests), then publish with the one metadata schema."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagebuilder import packer, render
from imagebuilder.artifact import Artifact
from imagebuilder.build import Job, Limits, Lookup, PackerExecutor, Scheduler, make_jobs, mark_existing
from imagebuilder.planner import Cell


def catalogue_lookup(cell: Cell) -> str | None:
    """The id of an image that already has this cell's build key, in the cell's own catalogue:
    the cloud's images for a cloud cell, the local catalogue for a qemu cell."""
    from imagebuilder.clouds import store_for

    records = store_for(cell.cloud, cell.settings).find_by_build_key(cell.build_key)
    return ", ".join(sorted(f"{r.region}:{r.image_id}" for r in records)) or None


def changed_cells(cells: list[Cell], lookup: Lookup) -> list[Cell]:
    """The cells that need a build: their build key names no image yet."""
    jobs = make_jobs(cells, [Path(".")] * len(cells))
    mark_existing(jobs, lookup, force=False)
    return [job.cell for job in jobs if not job.existing]


class TargetHooks:
    """Before Packer: a qemu cell's base disk. After: its boot test. Then publishing."""

    def __init__(self, publish: bool = True) -> None:
        self.publish = publish

    def prepare(self, job: Job) -> None:
        if job.cell.cloud == "qemu":
            from imagebuilder import local_target

            local_target.prepare(job)

    def finish(self, job: Job, artifact: Artifact) -> Artifact:
        if job.cell.cloud == "qemu":
            from imagebuilder import local_target

            local_target.boot_test(job, artifact)
        if self.publish:
            from imagebuilder.commands_images import publish_artifact

            return replace(artifact, ids=publish_artifact(artifact, job.cell.settings))
        return artifact


@dataclass(frozen=True)
class BuildOptions:
    output_dir: Path
    jobs: int
    force: bool = False
    dry_run: bool = False
    publish: bool = True


def per_cloud_limits(cells: list[Cell]) -> dict[str, int]:
    return {cell.cloud: int(cell.settings.get("max_parallel", 1)) for cell in cells}


def prepare_jobs(cells: list[Cell], options: BuildOptions, lookup: Lookup | None) -> list[Job]:
    """Jobs for the cells; only the cells that will build are rendered (skips cost nothing)."""
    jobs = make_jobs(cells, [options.output_dir / cell.id for cell in cells])
    if lookup is not None:
        mark_existing(jobs, lookup, options.force)
    to_build = [job.cell for job in jobs if not job.existing]
    if to_build:
        render.render_cells(to_build, options.output_dir, packer.installed_version())
    return jobs


def run_jobs(jobs: list[Job], options: BuildOptions, reporter: Any, hooks: Any | None = None) -> list[Job]:
    limits = Limits(jobs=options.jobs, per_cloud=per_cloud_limits([job.cell for job in jobs]))
    scheduler = Scheduler(jobs, limits, PackerExecutor(), hooks or TargetHooks(options.publish), reporter)
    return scheduler.run()
