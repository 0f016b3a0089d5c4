"""Which cells a change of versions.lock.yaml rebuilds, worked out offline.

The matrix is planned twice, once with the lock as it is and once with an older lock, and a
cell is rebuilt when its build key differs between the two (or its minor is new in the lock).
Nothing is asked of a cloud: the answer is what the nightly's ``plan --changed`` will build
once the new lock is on the default branch and the images of the old one exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagebuilder.config import LoadedMatrix
from imagebuilder.planner import Cell, plan
from imagebuilder.versions import MinorPins, VersionsLock


@dataclass(frozen=True)
class Rebuild:
    cell: Cell
    reasons: tuple[str, ...]  # "kubernetes 1.31.4 -> 1.31.5", "new in the lock", ...


def pin_changes(old: MinorPins | None, new: MinorPins) -> tuple[str, ...]:
    """What moved in one minor's pins, one short phrase each."""
    if old is None:
        return ("new in the lock",)
    old_versions, new_versions = old.component_versions(), new.component_versions()
    reasons = [f"{name} {old_versions.get(name, '(none)')} -> {version}"
               for name, version in new_versions.items() if old_versions.get(name) != version]
    if old.pause != new.pause:
        reasons.append(f"pause {old.pause} -> {new.pause}")
    for name, component in new.components.items():
        before = old.components.get(name)
        if before is None or before.version != component.version:
            continue  # its version moved: already said
        for file_name, pinned in component.files.items():
            was = before.files.get(file_name)
            if was is None or was.sha256 != pinned.sha256 or was.path != pinned.path:
                reasons.append(f"{file_name} sha256 or path changed at the same version")
    return tuple(reasons)


def rebuilds_for_lock(loaded: LoadedMatrix, old: VersionsLock, only: list[str] | None = None) -> list[Rebuild]:
    """The cells of `loaded` (with its lock) whose build key the lock `old` did not give them."""
    new = loaded.versions
    # A minor the old lock lacks is planned with the new pins and reported as new.
    old_minors = {**new.minors, **old.minors}
    before = loaded.model_copy(update={"versions": VersionsLock(schema=old.schema_, minors=old_minors)})
    old_keys = {cell.id: cell.build_key for cell in plan(before, only)}
    rebuilds: list[Rebuild] = []
    for cell in plan(loaded, only):
        added = cell.kubernetes not in old.minors
        if not added and old_keys.get(cell.id) == cell.build_key:
            continue
        reasons = pin_changes(old.minors.get(cell.kubernetes), new.minors[cell.kubernetes])
        rebuilds.append(Rebuild(cell, reasons or ("build key",)))
    return rebuilds
