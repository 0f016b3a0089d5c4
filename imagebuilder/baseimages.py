"""Base images resolved at plan time: the image a cell's reference names today goes into its key.

A cell's ``base_image`` is a reference that moves (an AMI name filter, a GCP family, a Glance
name, Azure's ``latest``, a vendor's "current" cloud image, a Debian suite). ``resolve_cells``
asks the cloud's own API, or the vendor's published checksums, which image that reference
selects now, and adds it to ``base_image`` as ``resolved``: the build key hashes it, and render
pins the build to exactly that image. So a patched base moves the key, and one key names one base.

- aws: DescribeImages (owner + name filter, available), the newest CreationDate -> the AMI id;
- gcp: images.getFromFamily -> the image name;
- openstack: Glance images by name, the newest active -> the image id;
- azure: the marketplace versions of publisher/offer/sku, the highest -> the version;
- qemu, vendor cloud images (Ubuntu, Rocky): the image's sha256 from the vendor's checksum file
  beside it (``SHA256SUMS`` or Rocky's ``CHECKSUM``), and the fixed file name it names;
- qemu, the Debian base built here: the sha256 of each suite's ``InRelease`` on the mirror.

One lookup per (cloud, region, reference) per plan run (``Resolver.memo``). A cloud that cannot
be used (no SDK, no credentials, no answer) is the ``CloudScope``'s: its cells are skipped with
one warning, the others go on. A reference that selects nothing is a ``UserError`` naming the
cell and the reference.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imagebuilder.cloudscope import CloudScope
from imagebuilder.config import LoadedMatrix
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell, rekeyed

HTTP_TIMEOUT = 30
# The Debian suites the local base is built from (distributions/debian.py mmdebstrap_command).
DEBIAN_SUITES: tuple[str, ...] = ("{suite}", "{suite}-updates")
DEBIAN_SECURITY_SUITES: tuple[str, ...] = ("{suite}-security",)
OFFLINE_NOTE = ("imagebuilder: --offline: base images not resolved; build keys hash the base image "
                "references alone")

Lookup = tuple[str, str, str]  # (cloud, region, reference as canonical JSON)


class Unresolvable(UserError):
    """The cloud answered, but the reference names no image."""


class Unreachable(Exception):
    """The vendor site or mirror did not answer (the qemu "cloud" cannot be used)."""


@dataclass
class Resolver:
    """Resolves cells' base images, one call per (cloud, region, reference), and counts the calls."""

    scope: CloudScope = field(default_factory=CloudScope)
    # The image store of a cell's cloud (clouds.store_for by default; tests pass stand-in stores).
    store_for: Callable[[Cell], Any] | None = None
    memo: dict[Lookup, dict[str, Any]] = field(default_factory=dict)
    calls: int = 0
    seconds: float = 0.0
    _stores: dict[tuple[str, str], Any] = field(default_factory=dict)

    def store(self, cell: Cell, region: str) -> Any:
        key = (cell.cloud, region)
        if key not in self._stores:
            if self.store_for is not None:
                self._stores[key] = self.store_for(cell)
            else:
                from imagebuilder.clouds import store_for

                self._stores[key] = store_for(cell.cloud, cell.settings)
        return self._stores[key]

    def lookup(self, cloud: str, region: str, reference: dict[str, Any],
               ask: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """ask() once per (cloud, region, reference) in this run."""
        key = (cloud, region, json.dumps(reference, sort_keys=True))
        if key not in self.memo:
            started = time.monotonic()
            self.calls += 1
            try:
                self.memo[key] = ask()
            finally:
                self.seconds += time.monotonic() - started
        return self.memo[key]

    def resolve(self, cell: Cell) -> dict[str, Any]:
        """The image the cell's base reference names now (raises Unresolvable, or the cloud's error)."""
        return RESOLVERS[cell.cloud](self, cell)


def resolve_cells(cells: list[Cell], loaded: LoadedMatrix, resolver: Resolver) -> list[Cell]:
    """The cells with their base images resolved and their keys computed again. The cells of a
    cloud the scope skips (one warning for the cloud) come back as they were: the caller leaves
    them out (``scope.skipped``); sysext cells run the stock image and are not resolved."""
    result = []
    for cell in cells:
        if cell.strategy != "bake" or cell.cloud in resolver.scope.skipped:
            result.append(cell)
            continue
        failure: list[Unresolvable] = []

        def attempt(cell: Cell = cell) -> dict[str, Any] | None:
            try:
                return resolver.resolve(cell)
            except Unresolvable as error:  # the cloud answered: this is the cell's error, not the cloud's
                failure.append(error)
                return None

        resolved = resolver.scope.run(cell.cloud, attempt, None)
        if failure:
            raise failure[0]
        if resolved is None:
            result.append(cell)
            continue
        result.append(rekeyed(cell, loaded, base_image={**cell.base_image, "resolved": resolved}))
    return result


def reference_text(cell: Cell) -> str:
    return " ".join(f"{name}={value}" for name, value in cell.base_image.items() if name != "resolved")


def _unresolvable(cell: Cell, why: str, fix: str) -> Unresolvable:
    return Unresolvable(f"{cell.id}: base image {reference_text(cell)}: {why} | fix: {fix} "
                        "(or plan with --offline)")


# -- AWS --------------------------------------------------------------------------------------

def _aws(resolver: Resolver, cell: Cell) -> dict[str, Any]:
    region = cell.settings["regions"][0]  # the build region; copies are made from its image
    reference = {"owner": cell.base_image["owner"], "name_filter": cell.base_image["name_filter"]}

    def ask() -> dict[str, Any]:
        images = resolver.store(cell, region).call(
            "ec2", region, "describe_images", reference["name_filter"], Owners=[reference["owner"]],
            Filters=[{"Name": "name", "Values": [reference["name_filter"]]},
                     {"Name": "state", "Values": ["available"]}]).get("Images", [])
        if not images:
            return {}
        newest = max(images, key=lambda image: (image.get("CreationDate", ""), image["ImageId"]))
        return {"ami": newest["ImageId"], "name": newest.get("Name", "")}

    found = resolver.lookup("aws", region, reference, ask)
    if not found:
        raise _unresolvable(cell, f"no available AMI of owner {reference['owner']} matches in {region}",
                            "check the name filter in imagebuilder/osinfo.py and the region")
    return found


# -- GCP --------------------------------------------------------------------------------------

def _gcp(resolver: Resolver, cell: Cell) -> dict[str, Any]:
    reference = {"project": cell.base_image["project"], "family": cell.base_image["family"]}
    store = resolver.store(cell, "global")

    def ask() -> dict[str, Any]:
        from imagebuilder.clouds.gcp import Missing

        try:
            image = store.call("getFromFamily", reference["family"],
                               lambda: store.images.get_from_family(project=reference["project"],
                                                                    family=reference["family"]))
        except Missing:
            return {}
        return {"image": image.name, "id": str(image.id)}

    found = resolver.lookup("gcp", "global", reference, ask)
    if not found:
        raise _unresolvable(cell, f"project {reference['project']} has no image in family {reference['family']}",
                            "check the family in imagebuilder/osinfo.py")
    return found


# -- OpenStack --------------------------------------------------------------------------------

def _openstack(resolver: Resolver, cell: Cell) -> dict[str, Any]:
    reference = {"image_name": cell.base_image["image_name"]}
    region = str(cell.settings.get("cloud") or "default")
    store = resolver.store(cell, region)

    def ask() -> dict[str, Any]:
        images = store._call(f"list images named {reference['image_name']}",
                             lambda: list(store.conn.image.images(name=reference["image_name"], status="active")))
        if not images:
            return {}
        newest = max(images, key=lambda image: (str(image.created_at or ""), str(image.id)))
        return {"image_id": str(newest.id)}

    found = resolver.lookup("openstack", region, reference, ask)
    if not found:
        raise _unresolvable(cell, f"Glance has no active image named {reference['image_name']}",
                            "upload the base image under that name")
    return found


# -- Azure ------------------------------------------------------------------------------------

def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def _azure(resolver: Resolver, cell: Cell) -> dict[str, Any]:
    location = cell.settings["location"]
    reference = {name: cell.base_image[name] for name in ("publisher", "offer", "sku")}
    store = resolver.store(cell, location)

    def ask() -> dict[str, Any]:
        from imagebuilder.clouds.azure import Missing

        try:
            versions = store.call("list image versions", "/".join(reference.values()),
                                  lambda: store.client.virtual_machine_images.list(
                                      location, reference["publisher"], reference["offer"], reference["sku"]))
        except Missing:
            return {}
        names = [version.name for version in versions or []]
        return {"version": max(names, key=_version_key)} if names else {}

    found = resolver.lookup("azure", location, reference, ask)
    if not found:
        raise _unresolvable(cell, f"the marketplace has no version of it in {location}",
                            "check publisher/offer/sku in imagebuilder/osinfo.py")
    return found


# -- qemu: vendor checksums and the Debian mirror ---------------------------------------------

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
    checksums = urllib.parse.urljoin(source, local.checksums if local else "SHA256SUMS")
    name = urllib.parse.urlparse(source).path.rsplit("/", 1)[-1]

    def ask() -> dict[str, Any]:
        body = _fetch(checksums)
        return {} if body is None else parse_checksums(body.decode(errors="replace"))

    sums = resolver.lookup("qemu", "", {"checksums": checksums}, ask)
    if name not in sums:
        raise _unresolvable(cell, f"{checksums} has no sha256 for {name}",
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

        found = resolver.lookup("qemu", "", {"inrelease": url}, ask)
        if not found:
            raise _unresolvable(cell, f"{url} does not exist", "check mirrors.debian / mirrors.debian_security")
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


def _qemu(resolver: Resolver, cell: Cell) -> dict[str, Any]:
    try:
        if cell.base_image["source"] == "local":
            return _debian_base(resolver, cell)
        return _vendor_image(resolver, cell)
    except Unreachable as error:
        raise UserError(str(error)) from None


RESOLVERS: dict[str, Callable[[Resolver, Cell], dict[str, Any]]] = {
    "aws": _aws,
    "gcp": _gcp,
    "openstack": _openstack,
    "azure": _azure,
    "qemu": _qemu,
}
