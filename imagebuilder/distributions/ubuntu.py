"""Ubuntu: the vendor's cloud image is the base disk for the local qemu target.

The image is downloaded once from its URL (the OS table's qemu reference by default, any mirror
by configuration), checked against its sha256 (given, or read from the ``SHA256SUMS``
published next to it) and cached under ``<cache>/base/ubuntu/<sha256>/``.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.atomicfile import replacing
from imagebuilder.cache import cache_dir
from imagebuilder.errors import UserError
from imagebuilder.osinfo import OPERATING_SYSTEMS

CHUNK = 1024 * 1024
TIMEOUT = 60


@dataclass(frozen=True)
class UbuntuBase:
    """A downloaded, verified cloud image (qcow2 despite the ``.img`` name)."""

    disk: Path
    url: str
    sha256: str


def default_url(os_id: str, arch: str = "amd64") -> str:
    """The vendor's cloud image URL for ``os_id`` (one place: imagebuilder.osinfo)."""
    info = OPERATING_SYSTEMS.get(os_id)
    reference = info.image("qemu", arch) if info is not None and info.distro == "ubuntu" else None
    if reference is None:
        raise UserError(f"{os_id!r} is not an Ubuntu release imagebuilder knows for {arch}")
    return reference["source"]


def sums_url(image_url: str) -> str:
    """The ``SHA256SUMS`` file published in the image's directory."""
    return urllib.parse.urljoin(image_url, "SHA256SUMS")


def checksum_from_sums(text: str, filename: str, source: str) -> str:
    """The sha256 of ``filename`` in a ``SHA256SUMS`` text (``<hex> *<name>`` lines)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            return parts[0].lower()
    raise UserError(f"{source}: no checksum for {filename}; give the image's sha256 explicitly")


def _open(url: str):
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT)  # noqa: S310 (http(s) and file URLs)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot download {url}: {reason}; check the URL or use a reachable mirror") from None


def fetch_checksum(image_url: str) -> str:
    source = sums_url(image_url)
    with _open(source) as response:
        text = response.read().decode()
    return checksum_from_sums(text, Path(urllib.parse.urlparse(image_url).path).name, source)


def download_verified(url: str, sha256: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` only if its content has ``sha256``; nothing is left behind otherwise."""
    sha256 = sha256.lower()
    digest = hashlib.sha256()
    with _open(url) as response, replacing(dest, binary=True) as out:
        while chunk := response.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != sha256:
            raise UserError(
                f"{url}: sha256 is {digest.hexdigest()}, expected {sha256}; "
                "fix the image's sha256 (or its URL) in the configuration"
            )
    return dest


def base_image(os_id: str, arch: str = "amd64", url: str | None = None, sha256: str | None = None,
               cache: Path | None = None) -> UbuntuBase:
    """The cached, verified cloud image of ``os_id``; downloaded on first use.

    ``url`` overrides the vendor URL (a mirror); without ``sha256`` the checksum comes
    from the ``SHA256SUMS`` next to the image.
    """
    url = url or default_url(os_id, arch)
    sha256 = (sha256 or fetch_checksum(url)).lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise UserError(f"{os_id}: sha256 {sha256!r} is not 64 hex digits; fix the image's sha256")
    root = (cache / "base") if cache else cache_dir("base")
    directory = root / "ubuntu" / sha256
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / (Path(urllib.parse.urlparse(url).path).name or "image.img")
    if not dest.exists():
        download_verified(url, sha256, dest)
    return UbuntuBase(disk=dest, url=url, sha256=sha256)


def remove_cached(base: UbuntuBase) -> None:
    shutil.rmtree(base.disk.parent, ignore_errors=True)
