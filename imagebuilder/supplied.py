"""Base images a vendor serves only behind a login, which the user downloads and names: Red Hat's
KVM guest image and DVD ISO need a Customer Portal login, so (as image-builder does with its
iso_url/iso_checksum variables) a RHEL cell takes the file's URL and sha256 from the matrix
(`supplied_images:`) or the environment. The sha256 is the image's identity and goes into the build
key; the URL is only where to fetch it (often a link that expires), so it is not. No credentials:
a URL that needs one is the user's to make (a mirror, a file:// path, a pre-signed link).

The OS table (osinfo.py) marks such a reference `{"supplied": <name>}`; planner.py fills in the
sha256 and the URL where they are given, and a cell without them fails before Packer naming the setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagebuilder.errors import UserError

if TYPE_CHECKING:
    from imagebuilder.planner import Cell

SUPPLIED = "supplied"  # the reference key naming what the user supplies
# What each supplied name is, as the error message tells the user.
WHAT = {"kvm_image": "Red Hat's KVM guest image (rhel-9.<minor>-x86_64-kvm.qcow2 from access.redhat.com)",
        "iso": "the DVD ISO (rhel-9.<minor>-x86_64-dvd.iso from access.redhat.com)"}


@dataclass(frozen=True)
class Supplied:
    url: str
    sha256: str


def env_names(os_id: str, name: str) -> tuple[str, str]:
    """IMAGEBUILDER_RHEL_9_ISO_URL and IMAGEBUILDER_RHEL_9_ISO_SHA256, for (rhel-9, iso)."""
    stem = f"IMAGEBUILDER_{os_id.upper().replace('-', '_')}_{name.upper()}"
    return f"{stem}_URL", f"{stem}_SHA256"


def setting(os_id: str, name: str) -> str:
    url, sha256 = env_names(os_id, name)
    return f"supplied_images.{os_id}.{name} (url, sha256) in the matrix, or {url} and {sha256} in the environment"


def lookup(os_id: str, name: str, matrix_images: Mapping[str, Mapping[str, Any]],
           environ: Mapping[str, str] | None = None) -> Supplied | None:
    """The matrix's entry, else the environment's pair; None when neither is given."""
    given = matrix_images.get(os_id, {}).get(name)
    if given is not None:
        return Supplied(url=str(given.url), sha256=str(given.sha256).lower())
    environ = os.environ if environ is None else environ
    url, sha256 = (environ.get(variable, "").strip() for variable in env_names(os_id, name))
    if url and sha256:
        return Supplied(url=url, sha256=sha256.lower())
    return None


def filled(os_id: str, reference: dict[str, Any], matrix_images: Mapping[str, Mapping[str, Any]],
           environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], str | None]:
    """(the reference with the image's sha256, its URL), or (the reference, None) when not given."""
    found = lookup(os_id, reference[SUPPLIED], matrix_images, environ)
    if found is None:
        return reference, None
    return {SUPPLIED: reference[SUPPLIED], "sha256": found.sha256}, found.url


def is_supplied(base_image: Mapping[str, Any]) -> bool:
    return SUPPLIED in base_image


def require(cell: Cell) -> tuple[str, str]:
    """(URL, sha256) of the cell's supplied base image, or the one-line error naming the setting."""
    name = cell.base_image[SUPPLIED]
    url, sha256 = cell.base_source.get("url"), cell.base_image.get("sha256")
    if not url or not sha256:
        raise UserError(f"{cell.id}: {cell.os} starts from {WHAT.get(name, name)}, which needs a login to "
                        f"download: set {setting(cell.os, name)} | fix: download it and name it there")
    return url, sha256


def require_http(cell: Cell) -> str:
    """The supplied image's URL for a cloud that fetches it itself (Nutanix's image service): http(s) only."""
    url, _ = require(cell)
    if not url.startswith(("http://", "https://")):
        raise UserError(f"{cell.id}: {cell.cloud} fetches the base image itself, and {url} is not an http(s) URL "
                        "| fix: serve the file over http(s) and name that URL in "
                        f"{setting(cell.os, cell.base_image[SUPPLIED])}")
    return url


def check(cell: Cell) -> None:
    """Before anything of the cell is built: its supplied base image is named."""
    if is_supplied(cell.base_image):
        require(cell)
