"""Child processes that stop when the build stops: Ctrl-C, SIGTERM or a cancelled job.

Every long step (mmdebstrap, ansible-playbook into a chroot, qemu-img, a VM) runs in its own
session, so a terminal's Ctrl-C reaches it once, from us, and its whole process group can be
told to stop: SIGTERM first (mmdebstrap and Ansible clean up on it), SIGKILL after a grace
period. Steps that mount run in a private mount namespace (``unshare --mount``), so the
kernel drops their mounts when they exit, however they exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

GRACE_SECONDS = 20.0
POLL_SECONDS = 0.1
# A private mount namespace: mounts made inside vanish with the last process in it.
PRIVATE_MOUNTS = ("unshare", "--mount", "--propagation", "private", "--")


class Cancelled(Exception):
    """The build was cancelled (Ctrl-C, SIGTERM) while this step ran; the step cleaned up."""


@dataclass(frozen=True)
class Result:
    returncode: int
    output: str


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt in the main thread, which stops the builds
    and cleans up. SIGINT too when the process started with it ignored (a shell's background
    job): Packer does the same, and an ignored Ctrl-C once let a whole build run on."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)


def stop_group(process: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM the process's group, then SIGKILL it if it has not exited within ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    # Stragglers of the group (a VM started by the step) go too.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(cmd: Sequence[str], *, cancel: threading.Event | None = None, input: str | None = None,
        cwd: Path | None = None, env: Mapping[str, str] | None = None, log: IO[bytes] | None = None,
        timeout: float | None = None, grace: float = GRACE_SECONDS) -> Result:
    """Run ``cmd`` in its own session; stop its group on ``cancel``, Ctrl-C or ``timeout``.

    Output goes to ``log`` when given (the result's ``output`` is then empty), else it is
    captured. Cancelled raises :class:`Cancelled`; a KeyboardInterrupt in the calling (main)
    thread stops the group and propagates; a timeout raises ``subprocess.TimeoutExpired``.
    """
    stdout: IO[bytes] | int = log if log is not None else subprocess.PIPE
    process = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env) if env is not None else None,
                               stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                               stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
    chunks: list[bytes] = []
    reader = None
    if log is None:
        reader = threading.Thread(target=lambda: chunks.append(process.stdout.read()), daemon=True)
        reader.start()
    started = time.monotonic()
    try:
        if input is not None:
            try:
                process.stdin.write(input.encode())
                process.stdin.close()
            except BrokenPipeError:
                pass
        while process.poll() is None:
            if cancel is not None and cancel.is_set():
                stop_group(process, grace)
                raise Cancelled(f"{cmd[0]} stopped: the build was cancelled")
            if timeout is not None and time.monotonic() - started > timeout:
                stop_group(process, grace)
                raise subprocess.TimeoutExpired(list(cmd), timeout)
            time.sleep(POLL_SECONDS)
    except BaseException:
        stop_group(process, grace)
        raise
    finally:
        if reader is not None:
            reader.join(timeout=10)
    return Result(process.returncode, b"".join(chunks).decode(errors="replace"))


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this process's mount namespace."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points
