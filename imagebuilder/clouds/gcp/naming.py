"""GCP image naming."""

from __future__ import annotations

from imagebuilder.osinfo import DEFAULT_ARCH
from imagebuilder.planner import variant_os


def image_family(os_id: str, minor: str, arch: str = DEFAULT_ARCH, variant: str | None = None) -> str:
    """The GCE image family consumers launch from, one per (os, minor), arch and variant: a family
    names one image, so the vendors keep an arch per family (`ubuntu-2204-lts-arm64`; GCE's advice
    in coreos/fedora-coreos-tracker#1377). GCE names allow no dots."""
    return f"capi-{variant_os(os_id, arch, variant)}-k8s-{minor.replace('.', '-')}"
