"""Files replaced whole or not at all: written beside the target under a temporary name, flushed to
disk, then renamed over it. A reader sees the old file or the new one, never part of one; a failure
(an exception in the block, a full disk, a checksum that does not match) leaves the old file as it
was and no temporary file behind."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

NEW_FILE_MODE = 0o644  # a file that replaces none; one that replaces a file keeps that file's mode


@contextmanager
def replacing(path: Path, *, binary: bool = False, mode: int | None = None) -> Iterator[IO[Any]]:
    """A file open for writing (UTF-8 text with '\\n' line ends, or bytes) that replaces `path` when
    the block ends without an exception. It gets `mode`, else the replaced file's, else NEW_FILE_MODE."""
    if mode is None:
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else NEW_FILE_MODE
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with (os.fdopen(descriptor, "wb") if binary
              else os.fdopen(descriptor, "w", encoding="utf-8", newline="\n")) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: Path, content: str | bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `content` in one rename (see replacing)."""
    with replacing(path, binary=isinstance(content, bytes), mode=mode) as handle:
        handle.write(content)


def place_file(source: Path, target: Path) -> None:
    """Hard-link (or copy) source to target, atomically: target is whole or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
