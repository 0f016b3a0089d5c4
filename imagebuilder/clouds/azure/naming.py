"""Azure Compute Gallery naming."""

from __future__ import annotations

from imagebuilder.osinfo import DEFAULT_ARCH
from imagebuilder.planner import variant_os


def image_definition(os_id: str, minor: str, arch: str, variant: str | None = None) -> str:
    """The Compute Gallery image definition, one per (os, minor) and variant; a definition has one
    architecture, and one security type (a CVM image needs its own)."""
    return f"capi-{variant_os(os_id, DEFAULT_ARCH, variant)}-k8s-{minor}" + ("-arm64" if arch == "arm64" else "")
