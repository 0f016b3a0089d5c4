"""Calling again what failed for a passing reason (throttling, 5xx, a cut connection): a bounded
number of attempts, waiting exponentially longer between them. Which errors are passing, and what a
caller says when it retries or gives up, stay with the caller."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_delay(first_delay: float, attempt: int, *, jitter: bool = True) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): first_delay doubled each time,
    with jitter a random 50-100% of it, so that many clients throttled together do not retry together."""
    delay = first_delay * 2 ** (attempt - 1)
    return delay * random.uniform(0.5, 1.0) if jitter else delay


def retrying(run: Callable[[], T], *, attempts: int, first_delay: float, retryable: Callable[[Exception], bool],
             sleep: Callable[[float], None], on_retry: Callable[[Exception, float], None] | None = None,
             jitter: bool = True) -> T:
    """run(), again after backoff_delay while it raises an error `retryable` accepts and attempts remain.

    on_retry(error, delay) is told before each wait. The last error, or the first one that is not
    retryable, is raised as it is."""
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return run()
        except Exception as error:
            if attempt >= attempts or not retryable(error):
                raise
            delay = backoff_delay(first_delay, attempt, jitter=jitter)
            if on_retry is not None:
                on_retry(error, delay)
            sleep(delay)
    raise AssertionError("unreachable")
