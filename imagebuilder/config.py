"""matrix.yaml: the user's declaration of OS x Kubernetes minor x cloud, validated."""

from __future__ import annotations

import fnmatch
import os
import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from imagebuilder.clouds import registry
from imagebuilder.models import CloudSettings, RebuildAfterDays, Strict, Variant
from imagebuilder.osinfo import ARCHES, BASE_MIRRORS, DEFAULT_ARCH, OPERATING_SYSTEMS, Arch, Strategy
from imagebuilder.supplied import SUPPLIED
from imagebuilder.versions import COMPONENTS, VersionsLock
from imagebuilder.yamlsource import (
    InputError,
    SourceMap,
    did_you_mean,
    load_model,
    pydantic_problem,
    read_yaml,
    validate,
)

# Where templates and roles live: the checkout the package was installed from,
# unless IMAGEBUILDER_HOME points elsewhere.
PROJECT_ROOT = Path(os.environ.get("IMAGEBUILDER_HOME") or Path(__file__).resolve().parent.parent)
PACKER_DIR = PROJECT_ROOT / "packer"
ANSIBLE_DIR = PROJECT_ROOT / "ansible"
# What bakes Flatcar (no roles): the module and its Packer build step, a baked Flatcar cell's key input.
FLATCAR_BAKE_FILES = (Path(__file__).resolve().parent / "flatcar.py",
                      Path(__file__).resolve().parent / "flatcar_packer" / "flatcar-build.pkr.hcl.j2")
DEFAULT_MATRIX = "matrix.yaml"

MINOR_PATTERN = re.compile(r"^1\.\d{1,3}$")
# `mirrors:` keys: a release site per component, `registry` for the container images, and the
# sites of the qemu base images (osinfo.BASE_MIRRORS).
MIRROR_KEYS: tuple[str, ...] = (*COMPONENTS, "registry", *BASE_MIRRORS)
_Strict = Strict


def _check_minor(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError("YAML read this minor as the number {raw} | fix: write it in quotes, e.g. \"1.30\"")
    if isinstance(value, str) and not MINOR_PATTERN.match(value):
        raise ValueError(f"'{value}' is not a Kubernetes minor | fix: write it as \"1.31\"")
    return value


Minor = Annotated[str, BeforeValidator(_check_minor)]


def cloud_settings() -> dict[str, type[CloudSettings]]:
    """Each cloud's settings model (imagebuilder/clouds/<cloud>/settings.py), in plan order."""
    return {name: cloud.settings_model() for name, cloud in registry.clouds().items()}


class CloudsBase(_Strict):
    """`clouds:`, one optional field per cloud of the registry (clouds_model builds the class)."""

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        # `qemu:` with nothing after it declares the cloud with its defaults, as `qemu: {}` does.
        # image-builder's provider names (`ami:`, `gce:`, `azure-sig:`) declare the cloud they are.
        if not isinstance(data, dict):
            return data
        aliases = registry.image_builder_aliases()
        declared: dict[str, Any] = {}
        for name, value in data.items():
            cloud = name if name in cls.model_fields else aliases.get(name, name)
            if cloud in declared:
                raise ValueError(f"'{name}' is image-builder's name for {cloud}, declared twice: keep one of them")
            declared[cloud] = {} if value is None and cloud in cls.model_fields else value
        return declared

    def declared(self) -> list[str]:
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


Clouds = CloudsBase  # for annotations: every matrix's `clouds` is an instance of a clouds_model()


def clouds_model() -> type[CloudsBase]:
    return _clouds_model(tuple((name, model) for name, model in cloud_settings().items()))


@lru_cache(maxsize=None)
def _clouds_model(models: tuple[tuple[str, type[CloudSettings]], ...]) -> type[CloudsBase]:
    fields: dict[str, Any] = {name: (model | None, None) for name, model in models}
    return create_model("Clouds", __base__=CloudsBase, **fields)


# What `variant:` in a selector matches on a cell without one.
NO_VARIANT = "none"


class CellSelector(_Strict):
    """A partial cell: any dimension left out matches everything. Globs are allowed;
    `variant: none` matches the cells without a variant."""

    os: str | None = None
    kubernetes: Minor | None = None
    cloud: str | None = None
    arch: str | None = None
    variant: str | None = None

    def describe(self) -> str:
        given = [f"{name}={value}" for name, value in (("os", self.os), ("kubernetes", self.kubernetes),
                                                       ("cloud", self.cloud), ("arch", self.arch),
                                                       ("variant", self.variant)) if value is not None]
        return ", ".join(given) or "any cell"

    def matches(self, os_id: str, minor: str, cloud: str, arch: str = DEFAULT_ARCH,
                variant: str | None = None) -> bool:
        return all(
            want is None or fnmatch.fnmatchcase(have, want)
            for want, have in ((self.os, os_id), (self.kubernetes, minor), (self.cloud, cloud), (self.arch, arch),
                               (self.variant, variant or NO_VARIANT))
        )


class Override(_Strict):
    match: CellSelector
    settings: dict[str, Any] = Field(default_factory=dict)  # merged into the cloud's settings
    ansible_vars: dict[str, Any] = Field(default_factory=dict)
    arch: Arch | None = None
    strategy: Strategy | None = None


# -- retention: every default and bound `prune` uses, in one place --------------------------
# A build timestamp is trusted only as Packer's UTC "YYYYMMDDhhmmss", between these bounds.
BUILD_TIME_EARLIEST = datetime(2015, 1, 1, tzinfo=timezone.utc)
BUILD_TIME_FUTURE_SLACK = timedelta(days=1)  # clock skew between the build host and us
MAX_KEEP_NEWEST = 1000
MAX_RETENTION_DAYS = 36500  # a hundred years: beyond that a number is a typo, and overflows datetime
MAX_TAG_LENGTH = 128  # AWS tag keys; the strictest of the clouds
# Every SDK client prune builds: seconds to connect and to wait for an answer, per request.
SDK_CONNECT_TIMEOUT_S = 10
SDK_READ_TIMEOUT_S = 60
PRUNE_TIMEOUT_S = 3600  # `prune --timeout`: the whole run; what is left undone is reported, not started
SDK_MAX_ATTEMPTS = 6  # our own retries of throttling, 5xx and unparseable answers (error pages)
SDK_BACKOFF_S = 1.0  # the first retry's delay; doubled each time, with jitter


def _strict_count(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean, not a number | fix: write a whole number, e.g. 3")
    return value


Count = Annotated[StrictInt, BeforeValidator(_strict_count)]


class RetentionPolicy(_Strict):
    keep_newest: Count = Field(3, ge=1, le=MAX_KEEP_NEWEST)
    min_age_days: Count = Field(7, ge=0, le=MAX_RETENTION_DAYS)
    deprecate_grace_days: Count = Field(14, ge=0, le=MAX_RETENTION_DAYS)
    # Clouds with an OBSOLETE stage (GCE: new uses refused, running ones go on) hold a deprecated
    # image there this long after its grace before deleting it; 0 deletes without the stage.
    obsolete_days: Count = Field(7, ge=0, le=MAX_RETENTION_DAYS)
    protect_tag: str = Field("imagebuilder-protect", max_length=MAX_TAG_LENGTH)
    # Images shared with other accounts or projects (launch permissions, members) count as in
    # use unless this is true: others may launch them, and we cannot see their instances.
    prune_shared: StrictBool = False

    @field_validator("protect_tag")
    @classmethod
    def _protect_tag_set(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("an empty protect tag would protect nothing "
                             "| fix: remove protect_tag for the default imagebuilder-protect, or name a tag")
        return value


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class SuppliedImage(_Strict):
    """A base image the user downloaded from behind the vendor's login (supplied.py): where to fetch
    it (http(s) or file://) and its sha256, which goes into the build key."""

    url: str = Field(pattern=r"^(https?|file)://\S+$")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")


class Matrix(_Strict):
    """matrix.yaml. Its `clouds` field is typed by the registry: load_matrix validates with
    matrix_model(), this class with that one field set to the clouds of the moment."""

    versions_file: str = "versions.lock.yaml"
    os: list[str] = Field(min_length=1)
    kubernetes: list[Minor] = Field(min_length=1)
    clouds: Clouds
    # One arch or a list; each is a dimension of the cells (`arch: [amd64, arm64]` plans both).
    arch: Annotated[list[str], BeforeValidator(_one_or_list)] = Field(default_factory=lambda: [DEFAULT_ARCH],
                                                                       min_length=1)
    include: list[CellSelector] = Field(default_factory=list)
    exclude: list[CellSelector] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)
    mirrors: dict[str, str] = Field(default_factory=dict)
    # OS -> supplied name (kvm_image, iso) -> the image the user supplies (supplied.py; or the environment).
    supplied_images: dict[str, dict[str, SuppliedImage]] = Field(default_factory=dict)
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    # The scheduled versions update commits patch releases to the default branch instead of
    # opening a pull request (.github/workflows/versions-update.yml).
    auto_merge_patches: bool = False
    # A cell whose newest image is older than this is built again even though its build key
    # exists: a floor for freshness where the base image cannot be resolved. None: off.
    rebuild_after_days: RebuildAfterDays | None = None


def matrix_model() -> type[Matrix]:
    return _matrix_model(clouds_model())


@lru_cache(maxsize=None)
def _matrix_model(clouds: type[CloudsBase]) -> type[Matrix]:
    return create_model("Matrix", __base__=Matrix, clouds=(clouds, ...))


class LoadedMatrix(BaseModel):
    """A validated matrix with its versions file and the source map for later errors."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    path: Path
    matrix: Matrix
    versions: VersionsLock
    versions_path: Path
    source: SourceMap


def load_matrix(path: Path) -> LoadedMatrix:
    data, source = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError(source.file, 1, "", f"expected a mapping at the top, got {type(data).__name__}",
                         "see README.md for the matrix format")
    matrix = validate(data, source, matrix_model())
    versions_path = (path.parent / matrix.versions_file).resolve()
    if not versions_path.exists():
        raise source.error(("versions_file",), f"versions file {matrix.versions_file} not found",
                           "create it with 'imagebuilder versions update' or fix the path")
    if not versions_path.is_file():
        raise source.error(("versions_file",), f"{matrix.versions_file or repr('')} is not a file",
                           "name the versions lock file, e.g. versions.lock.yaml")
    versions = load_model(versions_path, VersionsLock)
    _check_names(matrix, source, versions)
    return LoadedMatrix(path=path, matrix=matrix, versions=versions, versions_path=versions_path, source=source)


def _check_names(matrix: Matrix, source: SourceMap, versions: VersionsLock) -> None:
    known_os = tuple(OPERATING_SYSTEMS)
    known_minors = tuple(versions.minors)
    for index, os_id in enumerate(matrix.os):
        if os_id not in OPERATING_SYSTEMS:
            raise source.error(("os", index), f"unknown OS '{os_id}'", did_you_mean(os_id, known_os))
    for index, minor in enumerate(matrix.kubernetes):
        _check_pinned(minor, ("kubernetes", index), source, known_minors)
    for index, arch in enumerate(matrix.arch):
        if arch not in ARCHES:
            raise source.error(list_item_loc(source, "arch", index), f"unknown arch '{arch}'",
                               did_you_mean(arch, ARCHES))
    _check_unique(matrix.os, "os", source)
    _check_unique(matrix.kubernetes, "kubernetes", source)
    _check_unique(matrix.arch, "arch", source)
    for cloud in matrix.clouds.declared():
        _check_variants(cloud, getattr(matrix.clouds, cloud).variants, source)
    for rule_kind in ("include", "exclude"):
        for index, rule in enumerate(getattr(matrix, rule_kind)):
            _check_selector(rule, (rule_kind, index), source, known_os, known_minors, matrix.clouds.declared())
    for index, override in enumerate(matrix.overrides):
        _check_selector(override.match, ("overrides", index, "match"), source, known_os, known_minors,
                        matrix.clouds.declared())
        _check_override_settings(matrix, override, ("overrides", index, "settings"), source)
    for component, url in matrix.mirrors.items():
        if component not in MIRROR_KEYS:
            raise source.error(("mirrors", component), f"unknown component '{component}'",
                               did_you_mean(component, MIRROR_KEYS))
        if component != "registry" and not _is_http_url(url):
            raise source.error(("mirrors", component), f"'{url}' is not an http(s) URL",
                               "write the mirror's base URL, e.g. https://mirror.example/kubernetes")
    for os_id, images in matrix.supplied_images.items():
        names = supplied_names(os_id)
        if not names:
            raise source.error(("supplied_images", os_id), f"{os_id} has no supplied base image",
                               "only " + (", ".join(sorted(os for os in OPERATING_SYSTEMS if supplied_names(os)))
                                          or "none") + " take one: remove this entry")
        for name in images:
            if name not in names:
                raise source.error(("supplied_images", os_id, name), f"unknown supplied image '{name}'",
                                   did_you_mean(name, names))
    if not matrix.clouds.declared():
        raise source.error(("clouds",), "no cloud declared", "add at least one of: " + ", ".join(registry.names()))


def supplied_names(os_id: str) -> tuple[str, ...]:
    """The names of the base images the user supplies for this OS (kvm_image, iso), from its table."""
    info = OPERATING_SYSTEMS.get(os_id)
    names = {reference[SUPPLIED] for arches in (info.images.values() if info else ())
             for reference in arches.values() if SUPPLIED in reference}
    return tuple(sorted(names))


def list_item_loc(source: SourceMap, name: str, index: int) -> tuple[Any, ...]:
    """The list item's location, or the field's where the matrix wrote one value for a list."""
    return (name, index) if (name, index) in source.lines else (name,)


def _check_variants(cloud: str, variants: list[str], source: SourceMap) -> None:
    known = tuple(cloud_settings()[cloud].VARIANTS)
    for index, variant in enumerate(variants):
        loc = ("clouds", cloud, "variants", index)
        if variant not in known:
            fix = did_you_mean(variant, known) if known else f"{cloud} has no variants; remove variants"
            raise source.error(loc, f"unknown {cloud} variant '{variant}'", fix)
        if variant in variants[:index]:
            raise source.error(loc, f"'{variant}' is listed twice", "remove one; its cells would be planned twice")


def _check_unique(values: list[str], name: str, source: SourceMap) -> None:
    for index, value in enumerate(values):
        if value in values[:index]:
            raise source.error(list_item_loc(source, name, index), f"'{value}' is listed twice, also as {name}[{values.index(value)}]",
                               "remove one; each cell would be planned and built twice")


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def settings_problem(cloud: str, settings: dict[str, Any], changes: dict[str, Any], loc: tuple[Any, ...],
                     source: SourceMap) -> InputError | None:
    """What is wrong with `changes` (an override's settings at loc) on top of a cloud's settings, if anything."""
    model = cloud_settings()[cloud]
    for name in changes:
        if name == "variants":
            return source.error(loc + (name,), "an override cannot change which cells there are",
                                f"list variants under clouds.{cloud}, and exclude the cells you do not want")
        if name not in model.model_fields:
            return source.error(loc + (name,), f"unknown {cloud} setting '{name}'",
                                did_you_mean(name, tuple(model.model_fields)))
    try:
        model.model_validate({**settings, **changes})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = loc if error["loc"] and error["loc"][0] in changes else ("clouds", cloud)
        return pydantic_problem(error, source, model, at=where)
    return None


def _check_override_settings(matrix: Matrix, override: Override, loc: tuple[Any, ...], source: SourceMap) -> None:
    """Settings are checked against every declared cloud the match can reach, whether or not it matches a cell."""
    if not override.settings:
        return
    for cloud in matrix.clouds.declared():
        if override.match.cloud is not None and not fnmatch.fnmatchcase(cloud, override.match.cloud):
            continue
        variant = override.match.variant
        if variant is not None and not any(fnmatch.fnmatchcase(name, variant)
                                           for name in (NO_VARIANT, *cloud_settings()[cloud].VARIANTS)):
            continue  # only another cloud has that variant
        problem = settings_problem(cloud, getattr(matrix.clouds, cloud).model_dump(), override.settings, loc, source)
        if problem is None:
            continue
        unknown = next((name for name in override.settings if name not in cloud_settings()[cloud].model_fields), None)
        owner = next((other for other in matrix.clouds.declared()
                      if unknown and unknown in cloud_settings()[other].model_fields), None)
        if owner and override.match.cloud is None:
            raise source.error(loc + (unknown,), f"unknown {cloud} setting '{unknown}'",
                               f"'{unknown}' belongs to {owner}: add 'cloud: {owner}' to the match")
        raise problem


def _check_pinned(minor: str, loc: tuple[Any, ...], source: SourceMap, known_minors: tuple[str, ...]) -> None:
    if minor not in known_minors:
        raise source.error(loc, f"Kubernetes {minor} is not in the versions file",
                           f"{did_you_mean(minor, known_minors)} or add it with 'imagebuilder versions update --minor {minor}'")


def _check_selector(rule: CellSelector, loc: tuple[Any, ...], source: SourceMap, known_os: tuple[str, ...],
                    known_minors: tuple[str, ...], clouds: list[str]) -> None:
    variants = tuple(dict.fromkeys(name for cloud in clouds for name in cloud_settings()[cloud].VARIANTS))
    for dimension, known in (("os", known_os), ("kubernetes", known_minors), ("cloud", tuple(clouds)),
                             ("arch", ARCHES), ("variant", (NO_VARIANT, *variants))):
        value = getattr(rule, dimension)
        if value is None or any(ch in value for ch in "*?["):
            continue
        if value not in known:
            if dimension == "kubernetes":
                _check_pinned(value, loc + (dimension,), source, known_minors)
            what = "cloud not declared under clouds:" if dimension == "cloud" else f"unknown {dimension}"
            raise source.error(loc + (dimension,), f"{what} '{value}'", did_you_mean(value, known))
