"""Base images resolved at plan time: the image a cell's reference names today goes into its key.

A cell's ``base_image`` is a reference that moves (an AMI name filter, a GCP family, a Glance
name, Azure's ``latest``, a vendor's "current" cloud image, a Debian suite). ``resolve_cells``
asks the cloud's own API, or the vendor's published checksums, which image that reference
selects now, and adds it to ``base_image`` as ``resolved``: the build key hashes it, and render
pins the build to exactly that image. So a patched base moves the key, and one key names one base.

Each cloud resolves its own references (``Cloud.resolve_base`` in imagebuilder/clouds/<cloud>/):
the newest AMI of an owner + name filter, a GCP family's image, the newest Glance image of a name,
the highest marketplace version, a vendor cloud image's sha256 from the vendor's checksum file,
the Debian mirror's ``InRelease`` files.

One lookup per (cloud, region, reference) per plan run (``Resolver.memo``). A cloud that cannot
be used (no SDK, no credentials, no answer) is the ``CloudScope``'s: its cells are skipped with
one warning, the others go on. A reference that selects nothing is a ``UserError`` naming the
cell and the reference.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imagebuilder.clouds import registry
from imagebuilder.cloudscope import CloudScope
from imagebuilder.config import LoadedMatrix
from imagebuilder.errors import UserError
from imagebuilder.planner import VARIANT_SOURCE, Cell, base_cell, built_on_reference, rekeyed

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
        return registry.get(cell.cloud).resolve_base(self, cell)

    @staticmethod
    def unresolvable(cell: Cell, why: str, fix: str) -> Unresolvable:
        return Unresolvable(f"{cell.id}: base image {reference_text(cell)}: {why} | fix: {fix} "
                            "(or plan with --offline)")


def resolve_cells(cells: list[Cell], loaded: LoadedMatrix, resolver: Resolver) -> list[Cell]:
    """The cells with their base images resolved and their keys computed again. The cells of a
    cloud the scope skips (one warning for the cloud) come back as they were: the caller leaves
    them out (``scope.skipped``); sysext cells run the stock image and are not resolved."""
    result = []
    for cell in cells:
        if cell.strategy != "bake" or cell.cloud in resolver.scope.skipped:
            result.append(cell)
            continue
        if cell.base_image.get("source") == VARIANT_SOURCE:
            # Built on another variant's image: the key of that cell once its own base is resolved.
            (base,) = resolve_cells([base_cell(loaded, cell)], loaded, resolver)
            reference = built_on_reference(base)
            result.append(rekeyed(cell, loaded, base_image={**reference, "resolved": {"build_key": base.build_key}}))
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
