"""The build runner with the real Packer: null-builder cells for success, failure, retry, skip,
concurrency limits and Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagebuilder.build import Limits, NoHooks, PackerExecutor, Scheduler, State, mark_existing
from imagebuilder.progress import PlainReporter

from conftest import process_alive
from nullcells import null_cells, null_jobs

pytestmark = pytest.mark.skipif(subprocess.run(["which", "packer"], capture_output=True).returncode != 0,
                                reason="packer is installed by .ci/run")


def run(jobs, limits: Limits, retries: int = 2) -> tuple[list, str]:
    stream = io.StringIO()
    scheduler = Scheduler(jobs, limits, PackerExecutor(), NoHooks(), PlainReporter(stream), retries=retries,
                          retry_delay=0.1)
    return scheduler.run(), stream.getvalue()


def test_success_failure_and_artifact_records(tmp_path: Path) -> None:
    cells = null_cells(tmp_path, {"qemu": {}}, minors=["1.30", "1.31"], oses=["debian-12"])
    failing = cells[0].id

    def script(cell):
        return ["echo failing on purpose >&2; exit 3"] if cell.id == failing else ["echo building"]

    jobs, output = run(null_jobs(cells, tmp_path / "build", script), Limits(jobs=2))
    by_id = {job.cell.id: job for job in jobs}
    assert by_id[failing].state == State.FAILED
    assert by_id[failing].attempts == 1  # not a retryable error
    good = by_id[cells[1].id]
    assert good.state == State.DONE, good.error
    assert good.artifact is not None
    assert good.artifact.build_key == good.cell.build_key
    assert good.artifact.metadata.kubernetes_version == f"v{good.cell.kubernetes_version}"
    assert good.artifact.versions == good.cell.versions
    assert "building" in good.log_path.read_text()
    assert "failing on purpose" in by_id[failing].log_path.read_text()
    assert f"failed    {failing}" in output and f"done      {good.cell.id}" in output
    assert (good.directory / ".last-duration").exists()


def test_retryable_failure_is_retried_then_succeeds(tmp_path: Path) -> None:
    cells = null_cells(tmp_path, {"qemu": {}}, minors=["1.31"], oses=["debian-12"])
    marker = tmp_path / "attempted"
    script = [f"if [ ! -e {marker} ]; then touch {marker}; echo 'Error: RequestLimitExceeded: slow down' >&2; "
              "exit 1; fi", "echo second attempt"]
    jobs, output = run(null_jobs(cells, tmp_path / "build", lambda cell: script), Limits(jobs=1))
    assert jobs[0].state == State.DONE, jobs[0].error
    assert jobs[0].attempts == 2
    assert "retry" in output


def test_retries_are_bounded(tmp_path: Path) -> None:
    cells = null_cells(tmp_path, {"qemu": {}}, minors=["1.31"], oses=["debian-12"])
    script = ["echo 'Error: 503 Service Unavailable' >&2; exit 1"]
    jobs, _ = run(null_jobs(cells, tmp_path / "build", lambda cell: script), Limits(jobs=1), retries=2)
    assert jobs[0].state == State.FAILED
    assert jobs[0].attempts == 3
    assert jobs[0].log_path.read_text().count("=== attempt") == 3


def test_existing_build_keys_are_skipped_unless_forced(tmp_path: Path) -> None:
    cells = null_cells(tmp_path, {"qemu": {}}, minors=["1.30", "1.31"], oses=["debian-12"])
    existing = {cells[0].build_key: "local:image-1"}
    jobs = null_jobs(cells, tmp_path / "build", lambda cell: ["true"])
    mark_existing(jobs, lambda cell: existing.get(cell.build_key), force=False)
    assert [job.state for job in jobs] == [State.SKIPPED, State.QUEUED]
    jobs, _ = run(jobs, Limits(jobs=2))
    assert jobs[0].attempts == 0 and not (jobs[0].directory / "packer-manifest.json").exists()
    assert jobs[1].state == State.DONE
    forced = null_jobs(cells, tmp_path / "forced", lambda cell: ["true"])
    mark_existing(forced, lambda cell: existing.get(cell.build_key), force=True)
    assert all(job.state == State.QUEUED for job in forced)
    from rich.console import Console

    from imagebuilder.progress import print_summary

    screen = io.StringIO()
    print_summary(jobs, Console(file=screen, width=200))
    assert "skipped 1" in screen.getvalue() and "1 cells skipped" in screen.getvalue()
    assert jobs[1].cell.id in screen.getvalue() and jobs[0].cell.id not in screen.getvalue()


def test_global_and_per_cloud_limits_hold(tmp_path: Path) -> None:
    cells = null_cells(tmp_path, {"qemu": {}, "aws": {}}, minors=["1.30", "1.31", "1.32"])
    spans = tmp_path / "spans"
    spans.mkdir()

    def script(cell):  # a slow fake workload that records when it ran
        return [f"date +%s.%N > {spans}/{cell.id}.start", "sleep 1.5", f"date +%s.%N > {spans}/{cell.id}.end"]

    jobs, _ = run(null_jobs(cells, tmp_path / "build", script), Limits(jobs=3, per_cloud={"qemu": 1}))
    assert all(job.state == State.DONE for job in jobs), [job.error for job in jobs]
    intervals = {job.cell.id: (float((spans / f"{job.cell.id}.start").read_text()),
                               float((spans / f"{job.cell.id}.end").read_text())) for job in jobs}

    def overlap(ids: list[str]) -> int:
        events = sorted([(s, 1) for i in ids for s in [intervals[i][0]]] + [(e, -1) for i in ids for e in [intervals[i][1]]],
                        key=lambda pair: (pair[0], pair[1]))
        current = peak = 0
        for _, delta in events:
            current += delta
            peak = max(peak, current)
        return peak

    qemu = [i for i in intervals if i.startswith("qemu-")]
    assert overlap(qemu) == 1
    assert overlap(list(intervals)) <= 3
    assert overlap(list(intervals)) >= 2  # the limits allow parallel work, and it happened


CTRL_C_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from imagebuilder.build import Limits, NoHooks, PackerExecutor, Scheduler
from imagebuilder.procs import interrupt_on_signals
from imagebuilder.progress import PlainReporter, print_summary
from nullcells import null_cells, null_jobs
interrupt_on_signals()  # as imagebuilder.cli.main does
root = Path({root!r})
cells = null_cells(root, {{"qemu": {{}}}}, minors=["1.30", "1.31", "1.32"], oses=["debian-12"])
quick = cells[0].id
jobs = null_jobs(cells, root / "build",
                 lambda c: ["true"] if c.id == quick else
                 ["echo $$ > " + str(root / "slow-started"), "exec sleep 60"])
jobs[0].estimate = 1e6  # the quick cell goes first, so that one cell finishes before the interrupt
try:
    Scheduler(jobs, Limits(jobs=2), PackerExecutor(), NoHooks(), PlainReporter(), retry_delay=0.1).run()
except KeyboardInterrupt:
    print_summary(jobs)
    sys.exit(130)
"""


def _ignore_sigint() -> None:
    # What a non-interactive shell does to a background job: the child starts with SIGINT
    # ignored. Under such a runner the test once saw exit 0 and every build finished.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_packer_cleanly_and_reports(tmp_path: Path, sig: signal.Signals) -> None:
    code = CTRL_C_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    out_path = tmp_path / "output.txt"
    with out_path.open("w") as out:
        process = subprocess.Popen([sys.executable, "-u", "-c", code], stdout=out, stderr=subprocess.STDOUT,
                                   text=True, env={**os.environ, "COLUMNS": "200"}, preexec_fn=_ignore_sigint)
    marker = tmp_path / "slow-started"
    deadline = time.monotonic() + 120
    # The quick cell is done (the reporter said so) and the slow one runs its sleep.
    while not (marker.exists() and marker.read_text().strip() and "done " in out_path.read_text()):
        assert time.monotonic() < deadline, "the quick build never finished or the slow one never started"
        assert process.poll() is None, out_path.read_text()
        time.sleep(0.1)
    sleeper = int(marker.read_text())  # the pid of the `sleep 60` this test's build started
    assert process_alive(sleeper)
    process.send_signal(sig)
    process.wait(timeout=60)
    output = out_path.read_text()
    assert process.returncode == 130, output
    assert "interrupted" in output
    assert "done" in output and "cancelled" in output
    logs = "".join(p.read_text() for p in (tmp_path / "build").glob("*/build.log"))
    assert "cancelled" in logs.lower() or "interrupt" in logs.lower()
    assert not process_alive(sleeper), "the build's sleep outlived the interrupt"


def test_live_view_and_plain_lines_show_the_queue(tmp_path: Path) -> None:
    from rich.console import Console

    from imagebuilder.progress import LiveReporter

    cells = null_cells(tmp_path, {"qemu": {}}, minors=["1.30", "1.31"], oses=["debian-12"])
    jobs = null_jobs(cells, tmp_path / "build", lambda cell: ["true"])
    screen = io.StringIO()
    live = LiveReporter(Console(file=screen, force_terminal=True, width=120))
    jobs[0].state, jobs[0].started = State.RUNNING, time.monotonic()
    live.update(jobs, "started", jobs[0])
    jobs[0].state, jobs[0].finished = State.DONE, time.monotonic()
    jobs[1].state, jobs[1].error = State.FAILED, "boom"
    live.update(jobs, "failed", jobs[1])
    live.close(jobs)
    text = screen.getvalue()
    assert "running 1" in text and "queued 1" in text
    assert f"failed    {cells[1].id}: boom" in text
    plain = io.StringIO()
    PlainReporter(plain).update(jobs, "failed", jobs[1])
    assert plain.getvalue().strip() == f"failed    {cells[1].id}: boom  [done 1  failed 1]"
