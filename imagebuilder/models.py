"""The base models of every declaration: strict (unknown keys and coercions refused) and frozen.

A cloud's settings model (imagebuilder/clouds/<cloud>/settings.py) derives from ``CloudSettings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Settings that say where an image is copied or shared, or how many build at once;
    # they do not shape the image, so they stay out of the build key.
    OUTSIDE_BUILD_KEY: ClassVar[frozenset[str]] = frozenset({"max_parallel"})


# Days after which a cell whose newest image is older is built again though its build key exists
# (a floor for freshness where the base image cannot be resolved). Strict: `true` is not a number.
MAX_REBUILD_AFTER_DAYS = 36500


def _check_days(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REBUILD_AFTER_DAYS:
        raise ValueError(f"{{raw}} is not a number of days | fix: write whole days from 1 to {MAX_REBUILD_AFTER_DAYS}, "
                         "or leave rebuild_after_days out (off)")
    return value


RebuildAfterDays = Annotated[int, BeforeValidator(_check_days)]


@dataclass(frozen=True)
class Variant:
    """An extra cell of a cloud per (os, minor, arch), next to the default one: what it changes.
    Its id grows a suffix (`azure-ubuntu-2204-cvm-k8s-1.35`) and its build key hashes `build`."""

    summary: str  # what it is, for the README and errors
    settings: dict[str, Any] = field(default_factory=dict)  # merged over the cloud's (overrides still win)
    build: dict[str, str] = field(default_factory=dict)  # what the cloud's template sets for it
    # The variant starts from its own vendor image (osinfo OsInfo.variant_images), not the OS's usual one.
    own_base_image: bool = False
    # The variant starts from the image its cloud's `built_on` variant builds for the same OS, minor and
    # arch (the ova `vmx` flavour from the `base` one): the cell's base_image names that cell and its build
    # key (planner.built_on_reference), so its own key says which image it came from.
    built_on: str | None = None
    # Variables the variant's cells pass to the roles (under the matrix overrides' ansible_vars): what the
    # cell chooses; the values they select are the roles' defaults (the immutable variant's node contract).
    ansible_vars: dict[str, Any] = field(default_factory=dict)


class CloudSettings(Strict):
    """What every cloud's settings have. `rebuild_after_days` here overrides the matrix's top-level
    one for this cloud's cells (None: the top-level value, itself None for off). `variants` plans
    extra cells, one per variant the cloud knows (VARIANTS, next to each cloud's settings)."""

    rebuild_after_days: RebuildAfterDays | None = None
    variants: list[str] = Field(default_factory=list)

    # When to rebuild, not what, and which cells there are: outside the build key on every cloud
    # (a variant cell's key hashes its variant instead).
    COMMON_OUTSIDE_BUILD_KEY: ClassVar[frozenset[str]] = frozenset({"max_parallel", "rebuild_after_days",
                                                                    "variants"})
    VARIANTS: ClassVar[dict[str, Variant]] = {}
