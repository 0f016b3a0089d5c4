"""The immutable variant of the local build (image-builder's `build-qemu-ubuntu-2404-immutable` and
`build-kubevirt-qemu-ubuntu-2404-immutable`): a read-only root and a persistent data partition.

The ansible/roles/immutable role makes it, last, on the Packer build machine's boot disk; what the
image has (label, mount point, paths) is the node contract (roles/imagebuilder/defaults/main.yml),
which validate checks. Here: the variant as the qemu settings declare it, what the build's NoCloud
seed adds for it, and which cells cannot be built that way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagebuilder.models import Variant

if TYPE_CHECKING:
    from imagebuilder.planner import Cell

NAME = "immutable"
# The roles' switch (the node contract's default is false): the one thing the variant's cells choose.
ANSIBLE_VAR = "imagebuilder_immutable"
VARIANT = Variant(
    "a read-only root and a persistent data partition bound over the writable paths, built by Packer "
    "from the vendor's cloud image (image-builder's immutable target)",
    # The role keeps a 6 GiB root (immutable_root_partition_size_mb); the data partition has the rest.
    settings={"disk_size_mb": 12288},
    ansible_vars={ANSIBLE_VAR: True},
)
# The build machine's first boot must leave the root partition as the vendor made it: the role grows
# it up to the data partition it places after it (cloud-init would grow it over the whole disk).
SEED_CONFIG = "growpart:\n  mode: \"off\"\nresize_rootfs: false\n"


def of(cell: Cell) -> bool:
    """The cell's roles make the immutable layout (its variant's variable, unless an override turns it off)."""
    return cell.ansible_vars.get(ANSIBLE_VAR) is True


def seed_config(cell: Cell) -> str:
    """What the build's NoCloud user-data adds for this cell ("" for none)."""
    return SEED_CONFIG if of(cell) else ""


def unbuilt(cell: Cell) -> str | None:
    """Why this immutable cell cannot be built here, or None: only the Packer build of a vendor cloud image
    repartitions its boot disk (the offline build has no disk to repartition while the roles run)."""
    if not of(cell):
        return None
    local = cell.os_info.local_base
    if local is not None and local.kind == "cloud-image" and cell.settings.get("builder", "auto") != "offline":
        return None
    return (f"{cell.id}: the {NAME} variant is made by the Packer build of a vendor cloud image "
            f"(its boot disk repartitioned while the roles run), which {cell.os} has not here | fix: exclude "
            f"{{cloud: {cell.cloud}, os: {cell.os}, variant: {NAME}}}"
            + (f" or set clouds.{cell.cloud}.builder: packer" if local is not None and local.kind == "cloud-image" else ""))
