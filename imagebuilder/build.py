"""Run Packer for many cells at once: limits, skips, retries, logs, Ctrl-C, artifact records."""

from __future__ import annotations

import enum
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from imagebuilder.artifact import Artifact, from_packer_manifest
from imagebuilder.clouds import registry
from imagebuilder.packer import needs_init, packer_binary, packer_init_command
from imagebuilder.procs import Cancelled
from imagebuilder.sbom import INPUT_FILE as SBOM_INPUT_FILE
from imagebuilder.planner import Cell
from imagebuilder.textline import one_line

# Packer output that means "try again": cloud throttling, capacity and transient network faults.
RETRYABLE = re.compile(
    r"RequestLimitExceeded|Throttling|Rate exceeded|rateLimitExceeded|503 Service Unavailable|"
    r"InsufficientInstanceCapacity|connection reset by peer|i/o timeout|TLS handshake timeout|"
    r"Timeout waiting for SSH|ServerBusy|TooManyRequests",
    re.IGNORECASE,
)
DEFAULT_RETRIES = 2
LAST_DURATION_FILE = ".last-duration"


class State(str, enum.Enum):
    QUEUED = "queued"
    SKIPPED = "skipped"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNREACHABLE = "unreachable"  # its cloud could not be asked whether the image exists: not built
    # Its image exists (Packer finished) but was never fully published: publish only, no Packer run.
    PUBLISH_ONLY = "publish only"
    PUBLISHED = "published"  # a PUBLISH_ONLY cell whose existing image the publish reconcile completed


@dataclass
class Job:
    cell: Cell
    directory: Path
    estimate: float
    state: State = State.QUEUED
    attempts: int = 0
    started: float = 0.0
    finished: float = 0.0
    artifact: Artifact | None = None
    existing: str = ""  # the image that made this cell skip
    error: str = ""
    packer_args: list[str] = field(default_factory=list)  # set by a target's prepare step
    builder: str = "packer"  # which executor builds it; a target's prepare step may choose another
    # Set when the run is interrupted: the target's own long steps (base disk, boot test) stop on it.
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "build.log"

    @property
    def elapsed(self) -> float:
        if not self.started:
            return 0.0
        return (self.finished or time.monotonic()) - self.started


class Reporter(Protocol):
    def update(self, jobs: list[Job], event: str, job: Job | None) -> None: ...

    def close(self, jobs: list[Job]) -> None: ...


class Hooks(Protocol):
    """What a target adds around `packer build`: base images before, boot tests and publishing after."""

    def prepare(self, job: Job) -> None: ...

    def finish(self, job: Job, artifact: Artifact) -> Artifact: ...


class NoHooks:
    def prepare(self, job: Job) -> None:
        return

    def finish(self, job: Job, artifact: Artifact) -> Artifact:
        return artifact


@dataclass
class Limits:
    jobs: int
    per_cloud: dict[str, int] = field(default_factory=dict)

    def allows(self, cloud: str, running: Counter[str]) -> bool:
        return sum(running.values()) < self.jobs and running[cloud] < self.per_cloud.get(cloud, self.jobs)


def estimate_for(cell: Cell, directory: Path) -> float:
    try:
        return float((directory / LAST_DURATION_FILE).read_text())
    except (OSError, ValueError):
        # The cloud's first-run estimate until the cell's own last duration replaces it.
        return registry.get(cell.cloud).estimate_s


Executor = Callable[[Job, threading.Event], "Outcome"]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    output_tail: str = ""
    retryable: bool = False
    cancelled: bool = False


class PackerExecutor:
    """Runs `packer build` in a cell directory, logging to the cell's build.log."""

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        self.extra_args = extra_args

    def __call__(self, job: Job, cancel: threading.Event) -> Outcome:
        (job.directory / SBOM_INPUT_FILE).unlink(missing_ok=True)  # an earlier build's: this one downloads its own
        commands = [packer_init_command()] if needs_init(job.directory) else []
        commands.append([packer_binary(), "build", "-color=false", "-timestamp-ui", *self.extra_args,
                         *job.packer_args, "."])
        for command in commands:
            returncode, interrupted = self._run(job, command, cancel)
            tail = _tail(job.log_path)
            if interrupted:
                return Outcome(ok=False, output_tail=tail, cancelled=True)
            if returncode != 0:
                return Outcome(ok=False, output_tail=tail, retryable=bool(RETRYABLE.search(tail)))
        return Outcome(ok=True, output_tail=tail)

    @staticmethod
    def _run(job: Job, command: list[str], cancel: threading.Event) -> tuple[int, bool]:
        """Run one Packer command in the cell directory, logging to build.log: (exit status, interrupted)."""
        with job.log_path.open("ab") as log:
            log.write(f"\n=== attempt {job.attempts}: {' '.join(command)}\n".encode())
            log.flush()
            # Its own session: a terminal's Ctrl-C reaches Packer once, from us, so it cleans up.
            process = subprocess.Popen(command, cwd=job.directory, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, "PACKER_NO_COLOR": "1"})
            interrupted = False
            while process.poll() is None:
                if cancel.is_set() and not interrupted:
                    # The whole group, as a terminal's Ctrl-C would: Packer's wrapper process
                    # ignores SIGINT and leaves it to the real Packer process beneath it.
                    os.killpg(process.pid, signal.SIGINT)
                    interrupted = True
                time.sleep(0.05)
        return process.returncode, interrupted


class BuilderExecutors:
    """The executor per builder: each job runs on the one its ``builder`` names."""

    def __init__(self, executors: dict[str, Executor]) -> None:
        self.executors = executors

    def __call__(self, job: Job, cancel: threading.Event) -> Outcome:
        executor = self.executors.get(job.builder)
        if executor is None:
            raise ValueError(f"{job.cell.id}: no executor for builder {job.builder!r}")
        return executor(job, cancel)


def _tail(path: Path, size: int = 8192) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode(errors="replace")


class Scheduler:
    """Longest-expected-first onto free slots, within the global and per-cloud limits."""

    def __init__(self, jobs: list[Job], limits: Limits, executor: Executor, hooks: Hooks, reporter: Reporter,
                 retries: int = DEFAULT_RETRIES, retry_delay: float = 5.0,
                 collect: Callable[[Job], Artifact | None] | None = None) -> None:
        self.jobs = jobs
        self.limits = limits
        self.executor = executor
        self.hooks = hooks
        self.reporter = reporter
        self.retries = retries
        self.retry_delay = retry_delay
        self.cancel = threading.Event()
        for job in jobs:
            job.cancel = self.cancel
        self.collect = collect or manifest_artifact

    def run(self) -> list[Job]:
        pending = sorted((j for j in self.jobs if j.state == State.QUEUED), key=lambda j: (-j.estimate, j.cell.id))
        running: dict[Future[None], Job] = {}
        per_cloud: Counter[str] = Counter()
        with ThreadPoolExecutor(max_workers=max(1, self.limits.jobs)) as pool:
            try:
                while pending or running:
                    for job in self._startable(pending, per_cloud):
                        pending.remove(job)
                        per_cloud[job.cell.cloud] += 1
                        job.state, job.started = State.RUNNING, time.monotonic()
                        self.reporter.update(self.jobs, "started", job)
                        running[pool.submit(self._run_one, job)] = job
                    finished, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in finished:
                        job = running.pop(future)
                        per_cloud[job.cell.cloud] -= 1
                        self.reporter.update(self.jobs, job.state.value, job)
                    if not finished:
                        self.reporter.update(self.jobs, "tick", None)
            except KeyboardInterrupt:
                self.cancel.set()
                for job in pending:
                    job.state = State.CANCELLED
                self.reporter.update(self.jobs, "interrupted", None)
                wait(running)  # Packer removes its temporary resources before it exits
                raise
            finally:
                self.reporter.close(self.jobs)
        return self.jobs

    def _startable(self, pending: list[Job], per_cloud: Counter[str]) -> list[Job]:
        """The jobs to start now: the cloud with the most queued work per slot goes first
        (it bounds the makespan), and within a cloud the longest cell."""
        chosen: list[Job] = []
        running = Counter(per_cloud)
        queued = [job for job in pending]
        while queued:
            work: dict[str, float] = {}
            for job in queued:
                work[job.cell.cloud] = work.get(job.cell.cloud, 0.0) + job.estimate
            clouds = sorted(work, key=lambda cloud: -work[cloud] / self.limits.per_cloud.get(cloud, self.limits.jobs))
            pick = next((cloud for cloud in clouds if self.limits.allows(cloud, running)), None)
            if pick is None:
                break
            job = max((j for j in queued if j.cell.cloud == pick), key=lambda j: (j.estimate, j.cell.id))
            queued.remove(job)
            running[pick] += 1
            chosen.append(job)
        return chosen

    def _run_one(self, job: Job) -> None:
        try:
            self.hooks.prepare(job)
            while True:
                job.attempts += 1
                outcome = self.executor(job, self.cancel)
                if outcome.cancelled:
                    job.state, job.error = State.CANCELLED, "interrupted"
                    return
                if outcome.ok:
                    break
                if not outcome.retryable or job.attempts > self.retries:
                    job.state, job.error = State.FAILED, _last_error(outcome.output_tail)
                    return
                self.reporter.update(self.jobs, "retry", job)
                if self.cancel.wait(self.retry_delay * job.attempts):
                    job.state, job.error = State.CANCELLED, "interrupted"
                    return
            artifact = self.collect(job)
            job.artifact = self.hooks.finish(job, artifact) if artifact else None
            job.state = State.DONE
            (job.directory / LAST_DURATION_FILE).write_text(f"{job.elapsed:.1f}\n")
        except Cancelled:
            job.state, job.error = State.CANCELLED, "interrupted"
        except Exception as error:  # one cell's failure must not stop the others
            job.state, job.error = State.FAILED, f"{error.__class__.__name__}: {error}"
        finally:
            job.finished = time.monotonic()


def manifest_artifact(job: Job) -> Artifact:
    """The build's artifact record; a Packer build's SBOM and provenance are written here (attest.py)."""
    finished = time.time()
    artifact = from_packer_manifest(job.directory / "packer-manifest.json", job.cell.cloud,
                                    started_at=finished - job.elapsed, finished_at=finished)
    if job.builder == "packer":
        from imagebuilder.attest import attest_packer_build

        artifact = attest_packer_build(job, artifact)
    return artifact


# Our own failure messages (the roles' `fail` tasks, our scripts) start with this marker: the
# first one in Packer's output is the cell's error, whatever Packer says after it.
ERROR_MARKER = "imagebuilder: "
# Packer's prefixes before a provisioner's output line: "-timestamp-ui" time, then "source.name: ".
PACKER_PREFIX = re.compile(r"^(?:\d{4}-\d\d-\d\dT[\d:.]+Z: )?\s*(?:[\w-]+\.[\w-]+: )?")
ANSIBLE_MSG = '"msg": "' + ERROR_MARKER


def _last_error(tail: str) -> str:
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in lines:
        marked = _marked_error(line)
        if marked:
            return marked[:500]
    for line in reversed(lines):
        if "error" in line.lower() or "failed" in line.lower():
            return line[-300:]
    return lines[-1][-300:] if lines else "packer failed with no output"


def _marked_error(line: str) -> str | None:
    """The message of a line carrying the marker: an Ansible task result's "msg" or a plain line."""
    start = line.find(ANSIBLE_MSG)
    if start >= 0:
        try:
            message, _ = json.JSONDecoder().raw_decode(line, start + len('"msg": '))
        except ValueError:
            message = line[start + len('"msg": "'):]
        return one_line(message)[len(ERROR_MARKER):]
    bare = PACKER_PREFIX.sub("", line, count=1)
    return bare[len(ERROR_MARKER):].strip() if bare.startswith(ERROR_MARKER) else None


Lookup = Callable[[Cell], "str | None"]


def make_jobs(cells: list[Cell], directories: list[Path]) -> list[Job]:
    return [Job(cell=cell, directory=directory, estimate=estimate_for(cell, directory))
            for cell, directory in zip(cells, directories)]



def mark_existing(jobs: list[Job], lookup: Lookup, force: bool, parallel: int = 8) -> None:
    """Skip cells whose build key already names an image in their catalogue (the cloud itself),
    and cells whose cloud could not be asked (the lookup's ``unreachable``)."""
    prefetch = getattr(lookup, "prefetch", None)
    if callable(prefetch):  # one listing per store instead of one search per cell
        prefetch([job.cell for job in jobs])
    unreachable = getattr(lookup, "unreachable", None)
    if callable(unreachable):
        for job in jobs:
            if reason := unreachable(job.cell):
                job.state, job.error = State.UNREACHABLE, reason
    if force:
        return
    queued = [job for job in jobs if job.state is State.QUEUED]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        found = list(pool.map(lambda job: lookup(job.cell), queued))
    unpublished = getattr(lookup, "unpublished", None)
    for job, existing in zip(queued, found):
        if existing:
            done = not (callable(unpublished) and unpublished(job.cell))
            job.state, job.existing = (State.SKIPPED if done else State.PUBLISH_ONLY), existing
