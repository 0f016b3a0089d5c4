"""kubernetes-sigs/image-builder's make target names (`build-ami-ubuntu-2404`) for the cells of a
matrix: each cloud folder says its provider names (registry.Cloud.image_builder_names) and how a
cell's target is spelled (Cloud.image_builder_target); `imagebuilder targets` lists them and
`--only` (so `make build-<target>`) selects a target's cells."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import TYPE_CHECKING

from imagebuilder.clouds import registry

if TYPE_CHECKING:
    from imagebuilder.planner import Cell

PREFIX = "build-"
MINOR_SEPARATOR = "-k8s-"  # in a cell id, and in the Makefile's `--only '<target>-k8s-$(K8S)'`


def target_of(cell: Cell) -> str:
    return registry.get(cell.cloud).image_builder_target(cell.os, cell.arch, cell.variant)


def targets_of(cell: Cell) -> tuple[str, ...]:
    """The cell's target name, then the other names image-builder gives the same image."""
    return registry.get(cell.cloud).image_builder_targets(cell.os, cell.arch, cell.variant)


def targets(cells: Iterable[Cell]) -> dict[str, list[str]]:
    """Target name -> the ids of the cells it builds, by name (a cell under each of its names)."""
    found: dict[str, list[str]] = {}
    for cell in cells:
        for name in targets_of(cell):
            found.setdefault(name, []).append(cell.id)
    return dict(sorted(found.items()))


def matches(cell: Cell, pattern: str) -> bool:
    """A cell id glob, or a target name with or without `build-` (and `-k8s-<minor glob>`)."""
    if fnmatch.fnmatchcase(cell.id, pattern):
        return True
    name, _, minor = pattern.partition(MINOR_SEPARATOR)
    target = name if name.startswith(PREFIX) else PREFIX + name
    return target in targets_of(cell) and fnmatch.fnmatchcase(cell.kubernetes, minor or "*")


def select(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """The cells each pattern names: cell ids first (so `qemu-debian-12-k8s-*` selects what it
    always did); a pattern no cell id matches is read as an image-builder target."""
    chosen: set[str] = set()
    for pattern in patterns:
        by_id = {cell.id for cell in cells if fnmatch.fnmatchcase(cell.id, pattern)}
        chosen |= by_id or {cell.id for cell in cells if matches(cell, pattern)}
    return [cell for cell in cells if cell.id in chosen]
