"""One unreachable cloud does not stop the others.

A declared cloud whose SDK is missing, whose credentials are absent or whose endpoint does not
answer is skipped with one warning line naming the cloud and the fix; the command goes on with
the other clouds and exits with ``SKIPPED_EXIT``. ``--strict``, or asking for that cloud by name
(``--cloud aws``, or ``--only`` cells of that cloud alone), turns the warning into the error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import click

from imagebuilder.errors import UserError

# Exit status of a command that finished for every cloud it could reach but skipped one or more.
SKIPPED_EXIT = 3

T = TypeVar("T")


class CloudSkipped(UserError):
    """A cloud the user asked for by name (or under --strict) cannot be used."""


def describe(cloud: str, error: BaseException) -> str:
    """One line: what went wrong with this cloud, and the fix (the stores word their own errors)."""
    if isinstance(error, UserError):
        text = str(error)
    else:  # an SDK's surprise (a proxy's HTML page, a parser error): name it, never a traceback
        text = f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
    return text if text.startswith(cloud) else f"{cloud}: {text}"


@dataclass
class CloudScope:
    """Runs each cloud's part of a command; a failing cloud is skipped and remembered."""

    strict: bool = False
    explicit: frozenset[str] = frozenset()  # clouds the user named: their failure is an error
    skipped: dict[str, str] = field(default_factory=dict)  # cloud -> the warning's reason
    warn: Callable[[str], None] = field(default=lambda line: click.echo(line, err=True))

    def run(self, cloud: str, action: Callable[[], T], default: T) -> T:
        """action() for this cloud, or default when the cloud cannot be used (after one warning)."""
        if cloud in self.skipped:
            return default
        try:
            return action()
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of one cloud is that cloud's alone
            self.skip(cloud, describe(cloud, error))
            return default

    def skip(self, cloud: str, reason: str) -> None:
        if self.strict or cloud in self.explicit:
            raise CloudSkipped(reason) from None
        if cloud not in self.skipped:
            self.skipped[cloud] = reason
            self.warn(f"imagebuilder: warning: {cloud} skipped: {reason} "
                      f"(the other clouds went on; --strict makes this an error)")

    def exit_status(self, failed: bool = False) -> int:
        """1 when something failed, SKIPPED_EXIT when a cloud was skipped, else 0."""
        return 1 if failed else SKIPPED_EXIT if self.skipped else 0

    def exit(self, failed: bool = False) -> None:
        status = self.exit_status(failed)
        if status:
            sys.exit(status)


def explicit_clouds(named: Iterable[str | None]) -> frozenset[str]:
    return frozenset(name for name in named if name)
