"""The helpers every cloud and writer shares: one-line text, cloud times, atomic files, retries."""

from __future__ import annotations

import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from imagebuilder.atomicfile import NEW_FILE_MODE, place_file, replacing, write_atomically
from imagebuilder.retry import backoff_delay, retrying
from imagebuilder.textline import one_line
from imagebuilder.timeparse import EPOCH, as_utc, parse_time


def test_one_line_joins_lines_and_runs_of_whitespace() -> None:
    assert one_line("An error occurred (Throttling)\n  when calling\tDescribeImages:\r\n Rate exceeded\n") == (
        "An error occurred (Throttling) when calling DescribeImages: Rate exceeded")
    assert one_line(ValueError("two\nlines")) == "two lines"
    assert one_line("") == ""


def test_parse_time_reads_what_the_sdks_hand_over_as_aware_utc() -> None:
    moment = datetime(2026, 11, 25, 8, 30, 1, tzinfo=timezone.utc)
    assert parse_time("2026-11-25T08:30:01.000Z") == moment  # EC2 CreationDate
    assert parse_time("2026-11-25T00:30:01.000-08:00") == moment  # GCE creationTimestamp
    assert parse_time("2026-11-25T08:30:01") == moment  # Glance created_at: no zone means UTC
    assert parse_time(datetime(2026, 11, 25, 8, 30, 1)) == moment  # a naive SDK datetime
    offset = datetime(2026, 11, 25, 9, 30, 1, tzinfo=timezone(timedelta(hours=1)))
    assert parse_time(offset) is offset  # an aware one is kept as it is
    assert parse_time("") is None and parse_time(None) is None
    with pytest.raises(ValueError):
        parse_time("next Tuesday")


def test_as_utc_gives_a_naive_time_the_utc_zone_only() -> None:
    assert as_utc(datetime(2026, 1, 1)).tzinfo is timezone.utc
    berlin = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    assert as_utc(berlin) is berlin
    assert EPOCH == datetime(1970, 1, 1, tzinfo=timezone.utc)


class Passing(Exception):
    pass


def flaky(failures: list[Exception]) -> tuple[list[int], object]:
    calls: list[int] = []

    def run() -> str:
        calls.append(len(calls) + 1)
        if failures:
            raise failures.pop(0)
        return "answer"
    return calls, run


def test_retrying_waits_twice_as_long_each_time_until_an_answer() -> None:
    calls, run = flaky([Passing("throttled"), Passing("throttled"), Passing("throttled")])
    sleeps: list[float] = []
    told: list[tuple[str, float]] = []
    assert retrying(run, attempts=4, first_delay=0.5, retryable=lambda e: isinstance(e, Passing), sleep=sleeps.append,
                    on_retry=lambda error, delay: told.append((str(error), delay)), jitter=False) == "answer"
    assert calls == [1, 2, 3, 4] and sleeps == [0.5, 1.0, 2.0]
    assert told == [("throttled", 0.5), ("throttled", 1.0), ("throttled", 2.0)]


def test_retrying_jitters_each_wait_within_half_to_all_of_it() -> None:
    sleeps: list[float] = []
    _, run = flaky([Passing(), Passing(), Passing()])
    retrying(run, attempts=4, first_delay=1.0, retryable=lambda e: True, sleep=sleeps.append)
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0 and 2.0 <= sleeps[2] <= 4.0


def test_retrying_raises_the_last_error_after_the_attempts_and_others_at_once() -> None:
    calls, run = flaky([Passing("1"), Passing("2"), Passing("3"), Passing("4")])
    sleeps: list[float] = []
    with pytest.raises(Passing, match="^3$"):
        retrying(run, attempts=3, first_delay=0.1, retryable=lambda e: True, sleep=sleeps.append)
    assert calls == [1, 2, 3] and len(sleeps) == 2
    calls, run = flaky([Passing("1"), KeyError("not passing")])
    with pytest.raises(KeyError):
        retrying(run, attempts=5, first_delay=0.1, retryable=lambda e: isinstance(e, Passing), sleep=lambda _: None)
    assert calls == [1, 2]
    assert backoff_delay(0.5, 3, jitter=False) == 2.0


def test_write_atomically_replaces_the_file_whole_and_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "versions.lock"
    write_atomically(target, "first\n")
    assert target.read_text() == "first\n" and stat.S_IMODE(target.stat().st_mode) == NEW_FILE_MODE
    target.chmod(0o600)
    write_atomically(target, b"second\r\n")
    assert target.read_bytes() == b"second\r\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [path.name for path in tmp_path.iterdir()] == ["versions.lock"]


def test_a_failure_in_the_block_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "disk.raw"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        with replacing(target, binary=True) as out:
            out.write(b"half of the new")
            raise ValueError("sha256 mismatch")
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["disk.raw"]
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing-dir" / "file", "text")


def test_place_file_links_or_copies_whole(tmp_path: Path) -> None:
    source = tmp_path / "image.qcow2"
    source.write_bytes(b"QFI\xfb disk")
    target = tmp_path / "catalogue" / "images" / "image.qcow2"
    place_file(source, target)
    place_file(source, target)  # placing it again replaces it
    assert target.read_bytes() == source.read_bytes()
    assert [path.name for path in target.parent.iterdir()] == ["image.qcow2"]
