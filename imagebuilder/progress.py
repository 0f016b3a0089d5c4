"""How a build run shows itself: a live view in a terminal, plain lines in CI, a summary table."""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from imagebuilder.build import Job, State
from imagebuilder.clouds import registry


def _counts(jobs: list[Job]) -> str:
    counts = Counter(job.state for job in jobs)
    return "  ".join(f"{state.value} {counts[state]}" for state in State if counts[state])


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class PlainReporter:
    """One line per event, for CI logs."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def update(self, jobs: list[Job], event: str, job: Job | None) -> None:
        if event == "tick" or (job is None and event != "interrupted"):
            return
        with self.lock:
            if job is None:
                print(f"interrupted: stopping running builds ({_counts(jobs)})", file=self.stream, flush=True)
                return
            detail = ""
            if job.state == State.FAILED:
                detail = f": {job.error}"
            elif event == "retry":
                detail = f": retryable failure, attempt {job.attempts + 1} follows"
            elif job.state == State.DONE:
                detail = f" in {_duration(job.elapsed)}"
            print(f"{event:<9} {job.cell.id}{detail}  [{_counts(jobs)}]", file=self.stream, flush=True)

    def close(self, jobs: list[Job]) -> None:
        return


class LiveReporter:
    """A table of running cells with their elapsed time, above the queue counts."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def _view(self, jobs: list[Job]) -> Group:
        table = Table(box=None, show_header=False)
        for job in jobs:
            if job.state == State.RUNNING:
                table.add_row(Text("running", style="yellow"), job.cell.id, _duration(job.elapsed),
                              f"attempt {job.attempts}" if job.attempts > 1 else "")
        return Group(Text(_counts(jobs), style="bold"), table)

    def update(self, jobs: list[Job], event: str, job: Job | None) -> None:
        if job is not None and job.state in (State.DONE, State.FAILED):
            style = "green" if job.state == State.DONE else "red"
            extra = f" in {_duration(job.elapsed)}" if job.state == State.DONE else f": {job.error}"
            self.live.console.print(Text(f"{job.state.value:<9} {job.cell.id}{extra}", style=style))
        self.live.update(self._view(jobs), refresh=True)

    def close(self, jobs: list[Job]) -> None:
        self.live.stop()


def make_reporter() -> PlainReporter | LiveReporter:
    if sys.stdout.isatty() and not os.environ.get("CI"):
        return LiveReporter()
    return PlainReporter()


def summary_table(jobs: list[Job]) -> Table:
    """Every cell that ran or failed, with its artifacts; skipped cells are counted in the title."""
    table = Table(title=f"build summary: {_counts(jobs)}")
    for column in ("cell", "result", "time", "artifacts"):
        table.add_column(column)
    for job in sorted(jobs, key=lambda j: j.cell.id):
        if job.state == State.SKIPPED:
            continue
        if job.artifact:
            artifacts = ", ".join(f"{region}: {image}" for region, image in sorted(job.artifact.ids.items()))
        else:
            artifacts = job.existing if job.state == State.PUBLISHED else job.error
        took = _duration(job.elapsed) if job.started else "-"
        table.add_row(job.cell.id, job.state.value, took, artifacts)
    return table


def print_summary(jobs: list[Job], console: Console | None = None) -> None:
    console = console or Console(soft_wrap=True)
    skipped = [job for job in jobs if job.state == State.SKIPPED]
    if len(skipped) < len(jobs):
        console.print(summary_table(jobs))
    if skipped:
        console.print(f"{len(skipped)} cells skipped: their build keys are already images "
                      "(--dry-run lists them, --force rebuilds)")
    for cloud in sorted({job.cell.cloud for job in jobs if job.state == State.DONE} & set(registry.unmanaged())):
        console.print(f"not published: {registry.get(cloud).not_managed()}")
