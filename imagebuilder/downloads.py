"""Fetch pinned release files into a local cache, verifying the pinned sha256 before any use.

The cache is content-addressed: ``<cache>/sha256/<hex>`` holds a file whose sha256 is
``<hex>``. A file is only ever moved there after its sum was checked, and it is checked
again each time it is handed out, so a corrupted cache entry is fetched anew rather than
used. Standard library only (urllib), so every part of imagebuilder can use it.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


from imagebuilder import __version__
from imagebuilder.atomicfile import replacing
from imagebuilder.cache import cache_dir as imagebuilder_cache
from imagebuilder.errors import UserError
from imagebuilder.retry import retrying
from imagebuilder.versions import Download

RETRIES = 3  # attempts per file for transient failures (connection errors, HTTP 5xx, timeouts)
RETRY_BACKOFF_SECONDS = 1.0  # doubled after each failed attempt
TIMEOUT_SECONDS = 60.0  # per socket operation, not for the whole transfer
CHUNK = 1 << 20
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class _Transient(Exception):
    """A failure worth another attempt."""


def cache_dir() -> Path:
    """Where verified downloads are kept: the one imagebuilder cache ($IMAGEBUILDER_CACHE)."""
    return imagebuilder_cache("downloads")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(download: Download, *, cache: Path | None = None, retries: int = RETRIES,
          sleep: Callable[[float], None] = time.sleep) -> Path:
    """The path of a local file with ``download.sha256``, fetched from ``download.url`` if needed.

    Raises UserError naming the URL when the server's bytes do not have the pinned sum
    (expected and actual both given), when the file is missing, or when every attempt fails.
    """
    expected = download.sha256.lower()
    if not SHA256_PATTERN.match(expected):
        raise UserError(f"{download.url}: pinned sha256 '{download.sha256}' is not 64 hex digits "
                        "| fix: correct it in the versions file")
    root = cache or cache_dir()
    target = root / "sha256" / expected
    if target.is_file():
        if sha256_file(target) == expected:
            return target
        target.unlink()  # a damaged cache entry: fetch it again
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return retrying(lambda: _fetch_once(download.url, expected, target), attempts=retries,
                        first_delay=RETRY_BACKOFF_SECONDS, retryable=lambda error: isinstance(error, _Transient),
                        sleep=sleep, jitter=False)
    except _Transient as error:
        raise UserError(f"{download.url}: download failed after {retries} attempts ({error}) "
                        "| fix: check the mirror URL and the network, or set mirrors: in the matrix") from None


def fetch_all(downloads: dict[str, Download], *, cache: Path | None = None) -> dict[str, Path]:
    """Fetch and verify every file; nothing is returned unless all of them verified."""
    return {name: fetch(download, cache=cache) for name, download in downloads.items()}


def _fetch_once(url: str, expected: str, target: Path) -> Path:
    request = urllib.request.Request(url, headers={"User-Agent": f"imagebuilder/{__version__}"})
    with replacing(target, binary=True) as out:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as error:
            if error.code >= 500 or error.code == 429:
                raise _Transient(f"HTTP {error.code}") from None
            raise UserError(f"{url}: HTTP {error.code} {error.reason} "
                            "| fix: check the path in the versions file and the mirror in the matrix") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            # refused or unreachable, a timeout, a connection cut mid-body (IncompleteRead)
            raise _Transient(str(getattr(error, "reason", error))) from None
        actual = digest.hexdigest()
        if actual != expected:
            raise UserError(f"{url}: sha256 mismatch: expected {expected}, got {actual} "
                            "| fix: the mirror serves different bytes than the versions file pins; "
                            "check the mirror, or update the pin if the release really changed")
    return target
