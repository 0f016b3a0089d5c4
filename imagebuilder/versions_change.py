"""What `imagebuilder versions update` reports: one change of the lock file, and its error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from imagebuilder.errors import UserError


def _short(digest: str | None) -> str:
    return f"{digest[:12]}..." if digest else "(new)"


class VersionsUpdateError(UserError):
    """One line naming the file or URL and what is wrong; the CLI prints it and exits 2."""


@dataclass(frozen=True)
class Change:
    """One difference between the old and the new lock file."""

    minor: str
    item: str  # a component or "pause" (kind "version"); "kubeadm amd64" (kind "sha256")
    old: str | None  # None: not pinned before
    new: str
    kind: Literal["version", "sha256"] = "version"
    suspicious: bool = False  # a sum changed while its file's version did not

    def line(self) -> str:
        if self.suspicious:
            return (f"! {self.minor}: {self.item} sha256 changed although its version did not "
                    f"({_short(self.old)} -> {_short(self.new)}): find out why before committing")
        if self.kind == "sha256":
            return f"{self.minor}: {self.item} sha256 {_short(self.old)} -> {_short(self.new)}"
        return f"{self.minor}: {self.item} {self.old or '(new)'} -> {self.new}"
