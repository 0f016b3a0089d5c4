"""The per-account prune lock: one holder per key, others refuse or wait, a killed holder frees it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagebuilder import locks

HOLD = """
import sys, time
from imagebuilder import locks
with locks.exclusive(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMAGEBUILDER_CACHE", str(tmp_path))
    return tmp_path


def test_one_holder_per_key_and_keys_are_independent() -> None:
    with locks.exclusive("aws:111111111111@https://ec2"):
        with pytest.raises(locks.LockBusy, match=r"another prune of aws:111111111111@https://ec2 is running "
                                                 r"\(pid \d+\) \| fix: .*--wait"):
            with locks.exclusive("aws:111111111111@https://ec2"):
                pass
        with locks.exclusive("aws:222222222222@https://ec2"):  # another account: no wait
            pass
    with locks.exclusive("aws:111111111111@https://ec2"):  # released on exit
        pass


def test_waiting_gives_up_after_the_timeout_with_one_line() -> None:
    with locks.exclusive("local:/x"):
        started = time.monotonic()
        with pytest.raises(locks.LockBusy) as caught:
            with locks.exclusive("local:/x", wait=True, timeout=0.5, poll=0.05):
                pass
        assert time.monotonic() - started >= 0.5
        assert "after waiting 0.5s" in str(caught.value) and "\n" not in str(caught.value)
        assert caught.value.exit_code == 3


def test_a_holder_killed_by_sigkill_leaves_no_stale_lock(cache: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "openstack:mycloud"], stdout=subprocess.PIPE, text=True,
                              env={"IMAGEBUILDER_CACHE": str(cache), "PATH": "/usr/bin:/bin",
                                   "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(locks.LockBusy, match=f"pid {holder.pid}"):
        with locks.exclusive("openstack:mycloud"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locks.exclusive("openstack:mycloud", wait=True, timeout=5):
        pass
