"""The build pipeline for a set of cells: render, skip what exists, build, then each target's
own steps (the qemu target boot-tests), then publish with the one metadata schema."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from datetime import timedelta
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from imagebuilder import packer, render, supplied
from imagebuilder.artifact import Artifact
from imagebuilder.build import (BuilderExecutors, Executor, Job, Limits, Lookup, PackerExecutor, Scheduler, State,
                                make_jobs, mark_existing)
from imagebuilder.cloudscope import CloudScope, describe
from imagebuilder.clouds import ImageFilter, ImageRecord, canonical_cloud, registry, utcnow
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell, moved_inputs


# Why a cell of a cloud whose images are not managed is built (CatalogueLookup.why).
NOT_MANAGED = "images not managed: built every run"
# The settings that say where a cloud's images are listed; cells agreeing on them share one listing.
LISTING_SETTINGS = ("regions", "project_id", "cloud", "resource_group", "gallery", "location")


class CatalogueLookup:
    """Which cells already have an image: one listing per store (cloud and where it looks), matched
    against every cell's build key locally, instead of one search per cell and region.

    A cloud that cannot be listed is skipped through the scope (one warning); its cells are
    reported by ``unreachable`` and are neither built nor called changed. A cloud whose images are
    not managed (registry.Cloud.store_path None) is not listed: its cells are built every run.
    """

    def __init__(self, scope: CloudScope | None = None, rebuild_after_days: int | None = None) -> None:
        self.scope = scope or CloudScope(strict=True)
        self.rebuild_after_days = rebuild_after_days
        self.listings: dict[tuple[str, str], dict[str, list[ImageRecord]] | None] = {}

    @staticmethod
    def listing_key(cell: Cell) -> tuple[str, str]:
        where = {name: cell.settings.get(name) for name in LISTING_SETTINGS if name in cell.settings}
        cloud = cell.cloud if cell.cloud in registry.unmanaged() else canonical_cloud(cell.cloud)
        return cloud, json.dumps(where, sort_keys=True)

    def prefetch(self, cells: list[Cell]) -> None:
        """List each store the cells need once (the stores in parallel)."""
        for cell in cells:
            if cell.cloud in registry.unmanaged():  # nothing to list: no image is ever found
                self.listings[self.listing_key(cell)] = {}
        todo = {self.listing_key(cell): cell for cell in cells if self.listing_key(cell) not in self.listings}
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(todo)))) as pool:
            listed = list(pool.map(self._list, todo.values()))
        for key, by_key in zip(todo, listed):
            self.listings[key] = by_key

    def _list(self, cell: Cell) -> dict[str, list[ImageRecord]] | None:
        from imagebuilder.clouds import store_for

        def listing() -> dict[str, list[ImageRecord]]:
            by_key: dict[str, list[ImageRecord]] = {}
            for record in store_for(cell.cloud, cell.settings).list_images(ImageFilter()):
                if record.metadata is not None:
                    by_key.setdefault(record.metadata.build_key, []).append(record)
            return by_key

        return self.scope.run(cell.cloud, listing, None)

    def records(self, cell: Cell) -> list[ImageRecord]:
        """The images (one per region) with this cell's build key."""
        key = self.listing_key(cell)
        if key not in self.listings:
            self.prefetch([cell])
        return list((self.listings[key] or {}).get(cell.build_key, []))

    def unreachable(self, cell: Cell) -> str | None:
        """Why this cell's cloud could not be asked, or None."""
        key = self.listing_key(cell)
        if key not in self.listings:
            self.prefetch([cell])
        return self.scope.skipped.get(cell.cloud, "not listed") if self.listings[key] is None else None

    def rebuild_after(self, cell: Cell) -> int | None:
        """The cell's rebuild_after_days: its cloud's (or override's) setting, else the matrix's."""
        days = cell.settings.get("rebuild_after_days")
        return int(days) if days is not None else self.rebuild_after_days

    def too_old(self, cell: Cell, records: list[ImageRecord]) -> bool:
        """Its newest image is older than the cell's rebuild_after_days (never, when that is off)."""
        days = self.rebuild_after(cell)
        return days is not None and utcnow() - max(r.build_time for r in records) > timedelta(days=days)

    def unpublished(self, cell: Cell) -> bool:
        """Its image exists but a copy lacks the published tag: a publish was cut short."""
        return any(not record.published for record in self.records(cell))

    def why(self, cell: Cell) -> tuple[str, ...]:
        """Why the cell is built (or published): "new" when it has no image yet, "unpublished",
        "age" (rebuild_after_days), else what moved since its newest image (published first):
        "pins", "roles/templates", "base image", "settings", … from the inputs recorded on it."""
        if cell.cloud in registry.unmanaged():
            return (NOT_MANAGED,)
        records = self.records(cell)
        if records:
            return ("unpublished",) if self.unpublished(cell) else ("age",) if self.too_old(cell, records) else ()
        listing = self.listings.get(self.listing_key(cell)) or {}
        previous = [r for found in listing.values() for r in found if r.metadata and r.metadata.cell == cell.id]
        if not previous:
            return ("new",)
        newest = max(previous, key=lambda r: (r.published, r.build_time))
        return moved_inputs(newest.metadata.build_inputs if newest.metadata else "", cell.inputs)

    def __call__(self, cell: Cell) -> str | None:
        records = self.records(cell)
        if records and self.too_old(cell, records):
            return None  # older than rebuild_after_days: build it again
        return ", ".join(sorted(f"{r.region}:{r.image_id}" for r in records)) or None


def catalogue_lookup(cell: Cell) -> str | None:
    """The images that already have this cell's build key, in the cell's own catalogue (the
    cloud's images for a cloud cell, the local catalogue for a qemu cell); None when there are none."""
    return CatalogueLookup()(cell)


def changed_cells(cells: list[Cell], lookup: Lookup) -> list[Cell]:
    """The cells `build` has work for: their build key names no image yet, or its image was never
    fully published (publish only). Cells of an unreachable cloud are left out: nothing can be said of them."""
    jobs = make_jobs(cells, [Path(".")] * len(cells))
    mark_existing(jobs, lookup, force=False)
    return [job.cell for job in jobs if job.state in (State.QUEUED, State.PUBLISH_ONLY)]


def unbuilt_arch(cell: Cell) -> None:
    """A cell of an arch its cloud does not build here (Cloud.arches: the local outputs are amd64)
    fails before anything is fetched or booted, in one line."""
    reason = registry.get(cell.cloud).arch_refused(cell.arch)
    if reason:
        raise UserError(f"{cell.id}: {reason} | fix: exclude {{cloud: {cell.cloud}, arch: {cell.arch}}}")


def unbuilt_variant(cell: Cell) -> None:
    """A variant cell its cloud cannot build as its name says here (Cloud.variant_unbuilt: a
    template that does not render it, a builder that cannot) fails before Packer rather than make
    an image that is not what its name says."""
    reason = registry.get(cell.cloud).variant_unbuilt(cell, packer.installed_version()) if cell.variant else None
    if reason:
        raise UserError(reason)


def check_subscription(cell: Cell, environ: Mapping[str, str]) -> None:
    """Before anything of the cell is built: the OS's subscription credentials are in the environment."""
    subscription = cell.os_info.subscription
    wanted = subscription.missing(environ) if subscription else None
    if subscription and wanted:
        raise UserError(f"{cell.id}: {cell.os} registers with {subscription.name}: set {wanted} in the "
                        "environment | fix: export them before the build (never in the matrix)")


def plugin_missing(cell: Cell) -> None:
    """A cell whose builder only a plugin has stops before Packer when the installed Packer cannot
    install plugins (registry.Cloud.packer_builtin)."""
    missing = registry.get(cell.cloud).plugin_missing(packer.installed_version())
    if missing:
        raise UserError(f"{cell.id}: {missing} | fix: install Packer >= 1.7, or exclude {{cloud: {cell.cloud}}}")


class TargetHooks:
    """Before the builder and after it, the cloud's own steps (the qemu target: its base disk, then
    its boot test). Then publishing."""

    def __init__(self, publish: bool = True) -> None:
        self.publish = publish

    def prepare(self, job: Job) -> None:
        unbuilt_arch(job.cell)
        unbuilt_variant(job.cell)
        check_subscription(job.cell, os.environ)
        supplied.check(job.cell)
        plugin_missing(job.cell)
        registry.get(job.cell.cloud).prepare(job)
        if job.builder == "packer" and job.cell.os_info.family == "flatcar" and job.cell.strategy == "bake":
            from imagebuilder import flatcar

            flatcar.prepare_packer(job)  # the sysext its template uploads

    def finish(self, job: Job, artifact: Artifact) -> Artifact:
        cloud = registry.get(job.cell.cloud)
        artifact = cloud.finish(job, artifact) or artifact
        if self.publish and cloud.managed:  # an unmanaged cloud's image stays where Packer left it
            from imagebuilder.publishing import publish_artifact

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
    jobs = look_up_jobs(cells, options, lookup)
    render_jobs(jobs, options)
    return jobs


def look_up_jobs(cells: list[Cell], options: BuildOptions, lookup: Lookup | None) -> list[Job]:
    """Jobs for the cells, the ones whose image exists (or whose cloud cannot be asked) marked."""
    jobs = make_jobs(cells, [options.output_dir / cell.id for cell in cells])
    if lookup is not None:
        mark_existing(jobs, lookup, options.force)
    return jobs


def render_jobs(jobs: list[Job], options: BuildOptions) -> None:
    """Render the cells that will build."""
    to_build = [job.cell for job in jobs if job.state is State.QUEUED]
    if to_build:
        render.render_cells(to_build, options.output_dir, packer.installed_version())


def publish_existing(jobs: list[Job], dry_run: bool = False) -> list[str]:
    """Complete the publish of the cells built but not published (``State.PUBLISH_ONLY``) with the
    reconcile `imagebuilder publish` runs; no Packer. The changes made, one line each."""
    from imagebuilder.publishing import StoreCache, reconcile_cell

    stores = StoreCache()
    lines: list[str] = []
    for job in [job for job in jobs if job.state is State.PUBLISH_ONLY]:
        job.started = time.monotonic()
        try:
            changes = reconcile_cell(stores(job.cell), job.cell, dry_run=dry_run) or []
        except Exception as error:  # noqa: BLE001 - one cell's failure must not stop the others
            job.state, job.error = State.FAILED, describe(job.cell.cloud, error)
        else:
            lines.extend(("would: " if dry_run else "") + line for line in changes)
            if not dry_run:
                job.state = State.PUBLISHED
        finally:
            job.finished = time.monotonic()
    return lines


def executors() -> dict[str, Executor]:
    """Builder name -> executor. Every cell builds with Packer unless its target's prepare step
    chose another builder (the qemu target: the offline build, see local_target.builder_for, and
    Flatcar's bake, imagebuilder.flatcar)."""
    from imagebuilder import flatcar
    from imagebuilder.offline import BUILDER, OfflineExecutor

    return {"packer": PackerExecutor(), BUILDER: OfflineExecutor(), flatcar.BUILDER: flatcar.FlatcarExecutor()}


def run_jobs(jobs: list[Job], options: BuildOptions, reporter: Any, hooks: Any | None = None) -> list[Job]:
    """Publish the built-but-unpublished cells (unless --no-publish), then build the queued ones."""
    if options.publish:
        for line in publish_existing(jobs):
            click.echo(line)
    else:
        for job in jobs:
            if job.state is State.PUBLISH_ONLY:
                job.state = State.SKIPPED
    limits = Limits(jobs=options.jobs, per_cloud=per_cloud_limits([job.cell for job in jobs]))
    scheduler = Scheduler(jobs, limits, BuilderExecutors(executors()), hooks or TargetHooks(options.publish),
                          reporter)
    return scheduler.run()
