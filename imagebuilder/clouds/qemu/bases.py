"""The qemu target's base images: a vendor cloud image's sha256 from the vendor's checksum file
beside it (``SHA256SUMS`` or Rocky's ``CHECKSUM``) and the fixed file name it names, or, for the
Debian base built here, the sha256 of each suite's ``InRelease`` on the mirror. An OS installed from
the vendor's ISO (Photon OS) has its ISO's checksum pinned in the OS table: nothing to resolve."""

from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from imagebuilder import supplied
from imagebuilder.baseimages import Resolver, Unreachable
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell

CLOUD_NAME = "qemu"
HTTP_TIMEOUT = 30
# The Debian suites the local base is built from (distributions/debian.py mmdebstrap_command).
DEBIAN_SUITES: tuple[str, ...] = ("{suite}", "{suite}-updates")
DEBIAN_SECURITY_SUITES: tuple[str, ...] = ("{suite}-security",)


def _fetch(url: str) -> bytes | None:
    """The body at url; None on 404/410 (nothing there); Unreachable when the site does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 (http(s) URLs)
            return bytes(response.read())
    except urllib.error.HTTPError as error:
        if error.code in (404, 410):
            return None
        raise Unreachable(f"qemu: {url}: HTTP {error.code} | fix: check the mirror (mirrors: in the matrix)") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise Unreachable(f"qemu: {url}: unreachable ({reason}) | fix: set mirrors: in the matrix to a "
                          "reachable mirror, or plan with --offline") from None


SUMS_LINE = (re.compile(r"^(?P<sum>[0-9a-fA-F]{64}) [ *](?P<name>\S+)$"),  # GNU: <hex> *<name>
             re.compile(r"^SHA256 \((?P<name>[^)]+)\) = (?P<sum>[0-9a-fA-F]{64})$"))  # BSD: Rocky's CHECKSUM


def parse_checksums(text: str) -> dict[str, str]:
    """file name -> sha256 of a SHA256SUMS (GNU) or CHECKSUM (BSD-style) file."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        for pattern in SUMS_LINE:
            match = pattern.match(line.strip())
            if match:
                sums[match["name"]] = match["sum"].lower()
    return sums


def fixed_name(sums: dict[str, str], name: str) -> str:
    """The versioned name of the same file when the vendor lists one (Rocky's `latest` names a
    dated image), else the name itself."""
    others = sorted(other for other, digest in sums.items() if digest == sums[name] and other != name)
    return others[0] if others and "latest" in name else name


def _vendor_image(resolver: Resolver, cell: Cell) -> dict[str, Any]:
    source = cell.base_source.get("url") or cell.base_image["source"]
    local = cell.os_info.local_base
    name = urllib.parse.urlparse(source).path.rsplit("/", 1)[-1]
    checksums = urllib.parse.urljoin(source, (local.checksums if local else "SHA256SUMS").format(image=name))
    if local is not None and local.kind == "flatcar":
        from imagebuilder import flatcar

        resolved = flatcar.resolve_release(resolver, cell, CLOUD_NAME, source)
        return {key: resolved[key] for key in ("sha512", "file", "version")}

    def ask() -> dict[str, Any]:
        body = _fetch(checksums)
        return {} if body is None else parse_checksums(body.decode(errors="replace"))

    sums = resolver.lookup(CLOUD_NAME, "", {"checksums": checksums}, ask)
    if name not in sums:
        raise Resolver.unresolvable(cell, f"{checksums} has no sha256 for {name}",
                            "check the image URL in imagebuilder/osinfo.py or the mirror")
    return {"sha256": sums[name], "file": fixed_name(sums, name)}


def debian_release_urls(mirror: str, security_mirror: str, suite: str) -> list[str]:
    return ([f"{mirror.rstrip('/')}/dists/{s.format(suite=suite)}/InRelease" for s in DEBIAN_SUITES]
            + [f"{security_mirror.rstrip('/')}/dists/{s.format(suite=suite)}/InRelease"
               for s in DEBIAN_SECURITY_SUITES])


def _debian_base(resolver: Resolver, cell: Cell) -> dict[str, Any]:
    from imagebuilder.distributions import debian

    mirror = cell.base_source.get("debian", debian.DEFAULT_MIRROR)
    security = cell.base_source.get("debian_security", debian.DEFAULT_SECURITY_MIRROR)
    releases: dict[str, str] = {}
    for url in debian_release_urls(mirror, security, debian.SUITE):

        def ask(url: str = url) -> dict[str, Any]:
            body = _fetch(url)
            return {} if body is None else {"sha256": hashlib.sha256(body).hexdigest()}

        found = resolver.lookup(CLOUD_NAME, "", {"inrelease": url}, ask)
        if not found:
            raise Resolver.unresolvable(cell, f"{url} does not exist", "check mirrors.debian / mirrors.debian_security")
        suite = url.rstrip("/").split("/")[-2]
        releases[suite] = found["sha256"]
    return {"inrelease_sha256": releases}


def check_debian_releases(cell: Cell) -> None:
    """Before a Debian base is built from the mirror: its InRelease files are still the ones the
    plan resolved, or the base would not be the one the cell's key names."""
    planned = (cell.base_image.get("resolved") or {}).get("inrelease_sha256")
    if not planned:
        return
    try:
        now = _debian_base(Resolver(), cell)["inrelease_sha256"]
    except Unreachable as error:
        raise UserError(str(error)) from None
    moved = sorted(suite for suite in planned if now.get(suite) != planned[suite])
    if moved:
        raise UserError(f"{cell.id}: the Debian mirror published a new {', '.join(moved)} since the plan; "
                        "the base would not be the one the build key names | fix: run build again (it plans anew)")


def resolve(resolver: Resolver, cell: Cell) -> dict[str, Any]:
    if supplied.is_supplied(cell.base_image):
        return {}  # the user's download: its sha256 is in the reference already
    if "iso_url" in cell.base_image:
        return {}  # the vendor's installer ISO (LocalBase "installer"): its checksum pinned in the OS table
    try:
        if cell.base_image["source"] == "local":
            return _debian_base(resolver, cell)
        return _vendor_image(resolver, cell)
    except Unreachable as error:
        raise UserError(str(error)) from None
