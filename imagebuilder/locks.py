"""One prune at a time per cloud account: an exclusive lock file under the cache directory.

``exclusive(key)`` holds an ``fcntl.flock`` on ``<cache>/locks/<sha of key>.lock`` for the
duration of a ``with`` block. The kernel drops the lock when the process dies (even by
SIGKILL), so a killed run never leaves a stale lock. A second holder either waits
(``wait=True``, up to ``timeout`` seconds) or fails at once with a one-line ``LockBusy``
naming the holder's pid.

The lock covers one machine (a CronJob pod, a CI runner); the CronJob's
``concurrencyPolicy: Forbid`` and the workflow's ``concurrency`` group cover the rest.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imagebuilder.cache import cache_dir
from imagebuilder.errors import UserError


class LockBusy(UserError):
    """Another run holds the lock."""

    exit_code = 3


def lock_path(key: str) -> Path:
    return cache_dir("locks") / f"prune-{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"


@contextmanager
def exclusive(key: str, wait: bool = False, timeout: float | None = None, poll: float = 0.2) -> Iterator[Path]:
    path = lock_path(key)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if not wait:
                    raise LockBusy(f"another prune of {key} is running{holder} "
                                   "| fix: wait for it to finish, or pass --wait") from None
                if timeout is not None and time.monotonic() - started >= timeout:
                    raise LockBusy(f"another prune of {key} is still running{holder} after waiting {timeout:g}s "
                                   "| fix: run again once it has finished") from None
                time.sleep(poll)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()} {key}\n".encode(), 0)
        yield path
    finally:
        os.close(descriptor)  # closing releases the flock


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().split()[0]
    except (OSError, IndexError):
        return ""
    return f" (pid {pid})"
