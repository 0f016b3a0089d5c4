"""Where imagebuilder keeps what it builds once and reuses (base disks, downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "IMAGEBUILDER_CACHE"


def cache_dir(*parts: str) -> Path:
    """The cache directory (``$IMAGEBUILDER_CACHE`` or the user cache dir), joined with ``parts``.

    The directory is created if it does not exist.
    """
    root = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("imagebuilder")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
