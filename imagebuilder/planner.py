"""Expand a validated matrix into build cells with stable ids and content-derived build keys."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from imagebuilder import supplied, targets
from imagebuilder.clouds import registry
from imagebuilder.config import (
    ANSIBLE_DIR,
    FLATCAR_BAKE_FILES,
    PACKER_DIR,
    CellSelector,
    LoadedMatrix,
    Matrix,
    list_item_loc,
    settings_problem,
)
from imagebuilder.osinfo import ARCHES, BASE_MIRRORS, DEFAULT_ARCH, OPERATING_SYSTEMS, OsInfo
from imagebuilder.versions import (
    UPSTREAM_MIRRORS,
    UPSTREAM_REGISTRY,
    Download,
    downloads_for,
    images_for,
    registry_plain_http,
)
from imagebuilder.yamlsource import InputError, SourceMap

BUILD_KEY_SCHEMA = 1


@dataclass(frozen=True)
class Cell:
    id: str
    os: str
    kubernetes: str  # the minor, "1.31"
    kubernetes_version: str  # the pinned patch, "1.31.4"
    cloud: str
    arch: str
    strategy: str
    versions: dict[str, str]
    pause_image: str
    downloads: dict[str, Download]
    images: list[dict[str, str | None]]  # pre-pulled: name, tag, digest, source (see versions.images_for)
    registry_plain_http: bool
    settings: dict[str, Any]
    ansible_vars: dict[str, Any]
    base_image: dict[str, Any]  # the reference; with "resolved", the image it names (baseimages.py)
    image_name: str
    build_key: str = field(default="")
    # A short digest per input of the build key (key_inputs), recorded on the image so a later
    # plan can say what moved; as one compact string by encode_inputs.
    inputs: dict[str, str] = field(default_factory=dict)
    # Where the qemu base is fetched from (the reference through `mirrors:`); not in the key.
    base_source: dict[str, str] = field(default_factory=dict)
    variant: str | None = None  # one of the cloud's VARIANTS (config.py), or None for the default cell

    @property
    def os_info(self) -> OsInfo:
        return OPERATING_SYSTEMS[self.os]

    def summary(self) -> dict[str, Any]:
        """The fields `plan --format json` prints."""
        return {
            "id": self.id,
            "os": self.os,
            "kubernetes": self.kubernetes,
            "kubernetes_version": self.kubernetes_version,
            "cloud": self.cloud,
            "arch": self.arch,
            "variant": self.variant,
            "strategy": self.strategy,
            "build_key": self.build_key,
            "image_name": self.image_name,
            "versions": self.versions,
        }


def cell_id(cloud: str, os_id: str, minor: str, arch: str = DEFAULT_ARCH, variant: str | None = None) -> str:
    """`<cloud>-<os>-k8s-<minor>` for an amd64 cell without a variant; the others say theirs before `-k8s-`."""
    return f"{cloud}-{variant_os(os_id, arch, variant)}-k8s-{minor}"


def variant_os(os_id: str, arch: str = DEFAULT_ARCH, variant: str | None = None) -> str:
    """The OS as a cell id spells it: `ubuntu-2404`, `ubuntu-2404-arm64`, `ubuntu-2204-cvm`."""
    return "-".join([os_id, *([arch] if arch != DEFAULT_ARCH else []), *([variant] if variant else [])])


@dataclass(frozen=True)
class Combination:
    """One cell of the matrix before it is made: its dimensions."""

    cloud: str
    os: str
    minor: str
    arch: str = DEFAULT_ARCH
    variant: str | None = None

    def matched_by(self, rule: CellSelector) -> bool:
        return rule.matches(self.os, self.minor, self.cloud, self.arch, self.variant)


def image_name(cloud: str, os_id: str, kubernetes_version: str, arch: str = "amd64") -> str:
    """The cloud's naming (Cluster API provider conventions); `{timestamp}` is filled by Packer."""
    return registry.get(cloud).image_name(os_id, kubernetes_version, arch)


def base_image_for(info: OsInfo, cloud: str, arch: str, variant: str | None = None) -> dict[str, Any] | None:
    """The base image reference of a cell as the OS table spells it (osinfo.OPERATING_SYSTEMS);
    None where the vendor publishes no image of that arch (or variant) on that cloud."""
    return info.image(cloud, arch, variant)


def base_source_for(base_image: dict[str, Any], mirrors: dict[str, str]) -> dict[str, str]:
    """Where a qemu base is fetched from: {"url": its upstream URL through `mirrors:`}, or the
    Debian archives of the locally built Debian base; {} for the clouds' own images."""
    source = base_image.get("source")
    if source is None and str(base_image.get("iso_url", "")).startswith(BASE_MIRRORS["flatcar"] + "/"):
        source = base_image["iso_url"]  # Flatcar's ISO (its release is resolved like its qemu disk)
    if source is None or source == VARIANT_SOURCE:
        return {}
    if source == "local":
        return {name: mirrors[name].rstrip("/") for name in ("debian", "debian_security")}
    for name, upstream in BASE_MIRRORS.items():
        if source.startswith(upstream + "/"):
            return {"url": mirrors.get(name, upstream).rstrip("/") + source[len(upstream):]}
    return {"url": str(source)}


# base_image["source"] of a cell whose variant is built on another variant's image (Variant.built_on).
VARIANT_SOURCE = "variant"


def built_on_reference(base: Cell) -> dict[str, Any]:
    """The base_image of a cell built on the image of `base` (a cell of another variant): that cell and
    its build key, which hashes everything that made it (its own base image included)."""
    return {"source": VARIANT_SOURCE, "variant": base.variant, "cell": base.id, "build_key": base.build_key}


def base_cell(loaded: LoadedMatrix, cell: Cell) -> Cell:
    """The cell whose image `cell` is built on (its variant's `built_on`: same OS, minor and arch),
    as the matrix would plan it, planned or not."""
    built_on = registry.get(cell.cloud).settings.VARIANTS[cell.variant or ""].built_on
    mirrors = {**BASE_MIRRORS, **UPSTREAM_MIRRORS, **loaded.matrix.mirrors}
    return _make_cell(loaded, Combination(cell.cloud, cell.os, cell.kubernetes, cell.arch, built_on), mirrors)


def rekeyed(cell: Cell, loaded: LoadedMatrix, **changes: Any) -> Cell:
    """The cell with some fields changed (a resolved base image) and its build key computed again."""
    changed = Cell(**{**cell.__dict__, **changes, "build_key": ""})
    return keyed(changed, loaded.versions.minors[cell.kubernetes].model_dump(mode="json"))


def keyed(cell: Cell, pins: dict[str, Any]) -> Cell:
    """The cell with its build key and the digests of the key's inputs, from one material dict."""
    material = key_material(cell, pins)
    return Cell(**{**cell.__dict__, "build_key": _digest(material), "inputs": key_inputs(material)})


def _cloud_variants(matrix: Matrix, cloud: str) -> list[str | None]:
    return [None, *getattr(matrix.clouds, cloud).variants]


def _selected_combinations(matrix: Matrix, source: SourceMap) -> list[Combination]:
    """The cells' dimensions; an exclude, include or override that selects nothing is an error."""
    clouds = matrix.clouds.declared()
    every = [Combination(cloud, os_id, minor, arch, variant)
             for cloud in clouds for os_id in matrix.os for minor in matrix.kubernetes for arch in matrix.arch
             for variant in _cloud_variants(matrix, cloud)]
    for index, rule in enumerate(matrix.exclude):
        if not any(combo.matched_by(rule) for combo in every):
            raise _unmatched(source, ("exclude", index), rule)
    combos = [combo for combo in every if not any(combo.matched_by(rule) for rule in matrix.exclude)]
    seen = set(combos)
    # As in a GitHub Actions matrix: include adds after exclude, expanding missing dimensions.
    for index, rule in enumerate(matrix.include):
        matched = added = False
        for combo in _include_candidates(matrix, rule):
            if combo.matched_by(rule):
                matched = True
                if combo not in seen:
                    added = True
                    seen.add(combo)
                    combos.append(combo)
        if not matched:
            raise _unmatched(source, ("include", index), rule)
        if not added:
            raise source.error(("include", index), f"{rule.describe()} adds no cell: every cell it matches is "
                               "already planned", "remove it, or exclude those cells first")
    for index, override in enumerate(matrix.overrides):
        if not any(combo.matched_by(override.match) for combo in combos):
            excluded = any(combo.matched_by(override.match) for combo in every)
            if excluded:
                raise source.error(("overrides", index, "match"), f"{override.match.describe()} matches only "
                                   "cells the excludes remove", "remove the override or narrow the excludes")
            raise _unmatched(source, ("overrides", index, "match"), override.match)
    return combos


def _include_candidates(matrix: Matrix, rule: CellSelector) -> list[Combination]:
    """What an include may add: its named values, or every value of the matrix for a dimension it leaves out."""
    def named(value: str | None, known: Any) -> bool:
        return bool(value) and "*" not in str(value) and value in known

    clouds = matrix.clouds.declared()
    return [Combination(cloud, os_id, minor, arch, variant)
            for cloud in ([rule.cloud] if named(rule.cloud, clouds) else clouds)
            for os_id in ([rule.os] if named(rule.os, OPERATING_SYSTEMS) else matrix.os)
            for minor in ([rule.kubernetes] if named(rule.kubernetes, matrix.kubernetes) or
                          (rule.kubernetes and "*" not in rule.kubernetes) else matrix.kubernetes)
            for arch in ([rule.arch] if named(rule.arch, ARCHES) else matrix.arch)
            for variant in ([rule.variant] if named(rule.variant, registry.get(cloud).settings.VARIANTS)
                            else _cloud_variants(matrix, cloud))]


def _unmatched(source: SourceMap, loc: tuple[str | int, ...], rule: CellSelector) -> InputError:
    return source.error(loc, f"{rule.describe()} matches no cell of the matrix",
                        "check it against os:, kubernetes: and clouds:, or remove it")


def plan(loaded: LoadedMatrix, only: list[str] | None = None) -> list[Cell]:
    """Every cell of the matrix (optionally only ids matching a glob), in a stable order."""
    matrix = loaded.matrix
    combos = _selected_combinations(matrix, loaded.source)
    if not combos:
        loc = ("exclude",) if matrix.exclude else ("os",)
        raise loaded.source.error(loc, "the matrix selects no cell: the excludes remove every combination",
                                  "narrow the exclude rules")
    mirrors = {**BASE_MIRRORS, **UPSTREAM_MIRRORS, **matrix.mirrors}
    cells = [_make_cell(loaded, combo, mirrors) for combo in combos]
    _check_distinct(loaded, cells)
    if only:
        cells = targets.select(cells, only)  # cell id globs, or image-builder's target names
    order = registry.names()
    return sorted(cells, key=lambda cell: (order.index(cell.cloud), cell.os, ARCHES.index(cell.arch),
                                           cell.variant or "", _minor_key(cell.kubernetes)))


def _check_distinct(loaded: LoadedMatrix, cells: list[Cell]) -> None:
    """An override's arch can turn a cell into one the arch dimension already plans."""
    first: dict[str, Cell] = {}
    for cell in cells:
        if cell.id in first:
            index = next((i for i, o in enumerate(loaded.matrix.overrides)
                          if o.arch == cell.arch and fnmatch.fnmatchcase(cell.os, o.match.os or "*")), None)
            raise loaded.source.error(("overrides", index, "arch") if index is not None else ("arch",), f"makes a second {cell.id}: arch: already "
                                      "plans that cell", f"remove the override's arch, or exclude {{os: {cell.os}, "
                                      f"arch: {cell.arch}}}")
        first[cell.id] = cell


def _minor_key(minor: str) -> tuple[int, ...]:
    return tuple(int(part) for part in minor.split("."))


def _make_cell(loaded: LoadedMatrix, combo: Combination, mirrors: dict[str, str]) -> Cell:
    matrix = loaded.matrix
    cloud, os_id, minor, variant = combo.cloud, combo.os, combo.minor, combo.variant
    info = OPERATING_SYSTEMS[os_id]
    pins = loaded.versions.minors[minor]
    settings: dict[str, Any] = getattr(matrix.clouds, cloud).model_dump()
    known_variant = registry.get(cloud).settings.VARIANTS[variant] if variant else None
    if known_variant is not None:
        settings = registry.get(cloud).settings.model_validate({**settings, **known_variant.settings}).model_dump()
    ansible_vars: dict[str, Any] = dict(known_variant.ansible_vars) if known_variant is not None else {}
    arch = combo.arch
    arch_loc = list_item_loc(loaded.source, "arch", matrix.arch.index(arch)) if arch in matrix.arch else ("include",)
    strategy = info.strategy_on(cloud)
    for index, override in enumerate(matrix.overrides):
        if not combo.matched_by(override.match):
            continue
        settings = _merged_settings(loaded, cloud, settings, override.settings, index)
        ansible_vars.update(override.ansible_vars)
        if override.arch:
            arch, arch_loc = override.arch, ("overrides", index, "arch")
        strategy = override.strategy or strategy
    own_image = variant if known_variant is not None and known_variant.own_base_image else None
    base_image = registry.get(cloud).base_image(base_image_for(info, cloud, arch, own_image), info, arch)
    if known_variant is not None and known_variant.built_on:
        # From the image of the variant it is built on; that cell's own errors (no base image) come first.
        base_image = built_on_reference(_make_cell(loaded, Combination(cloud, os_id, minor, combo.arch,
                                                                       known_variant.built_on), mirrors))
    this_cell = cell_id(cloud, os_id, minor, arch, variant)
    if base_image is None and cloud not in info.images:
        raise loaded.source.error(("clouds", cloud), f"{os_id} has no base image on {cloud} ({this_cell})",
                                  f"exclude {{os: {os_id}, cloud: {cloud}}}")
    if base_image is None and own_image is not None:
        declared = getattr(matrix.clouds, cloud).variants
        variant_loc = ("clouds", cloud, "variants", declared.index(own_image)) if own_image in declared else ("include",)
        raise loaded.source.error(variant_loc, f"{os_id} has no {arch} {own_image} base image on {cloud} ({this_cell})",
                                  f"exclude {{os: {os_id}, cloud: {cloud}, variant: {own_image}"
                                  + (f", arch: {arch}}}" if info.variant_images.get(cloud, {}).get(own_image) else "}"))
    if base_image is None:
        raise loaded.source.error(arch_loc, f"{os_id} has no {arch} base image on {cloud} ({this_cell})",
                                  f"exclude {{os: {os_id}, cloud: {cloud}, arch: {arch}}}")
    cell = Cell(
        id=this_cell,
        os=os_id,
        kubernetes=minor,
        kubernetes_version=pins.kubernetes_version,
        cloud=cloud,
        arch=arch,
        strategy=strategy,
        versions=pins.component_versions(),
        pause_image=f"{UPSTREAM_REGISTRY}/pause:{pins.pause}",
        downloads=downloads_for(pins, arch, mirrors),
        images=images_for(pins, mirrors.get("registry")),
        registry_plain_http=registry_plain_http(mirrors.get("registry")),
        settings={name: value for name, value in settings.items() if name != "variants"},  # the matrix's, not the cell's
        ansible_vars=ansible_vars,
        base_image=base_image,
        # A variant's images are named apart from the default cell's (their own AMI names, GCP
        # families, Azure definitions); an arch's as before (the clouds record the arch).
        image_name=image_name(cloud, variant_os(os_id, DEFAULT_ARCH, variant), pins.kubernetes_version, arch),
        variant=variant,
    )
    base_source = base_source_for(cell.base_image, mirrors)
    if supplied.is_supplied(base_image):  # the user's download: its sha256 in the key, its URL not
        filled, url = supplied.filled(os_id, base_image, matrix.supplied_images)
        cell = Cell(**{**cell.__dict__, "base_image": filled})
        base_source = {"url": url} if url else {}
    cell = Cell(**{**cell.__dict__, "base_source": base_source})
    return keyed(cell, pins.model_dump(mode="json"))


def _merged_settings(loaded: LoadedMatrix, cloud: str, settings: dict[str, Any], changes: dict[str, Any],
                     index: int) -> dict[str, Any]:
    problem = settings_problem(cloud, settings, changes, ("overrides", index, "settings"), loaded.source)
    if problem is not None:
        raise problem
    return registry.get(cloud).settings.model_validate({**settings, **changes}).model_dump()


@lru_cache(maxsize=None)
def tree_digest(root: Path, prefixes: tuple[str, ...] = ("",)) -> str:
    """sha256 over the relative paths and bytes of every file under root (matching a prefix)."""
    digest = hashlib.sha256()
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            relative = path.relative_to(root).as_posix()
            if not relative.startswith(prefixes):
                continue
            digest.update(relative.encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def files_digest(files: dict[str, Path]) -> str:
    """sha256 over each file's name and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(files[name].read_bytes()).digest())
    return digest.hexdigest()


@lru_cache(maxsize=None)
def templates_digest(cloud_name: str) -> str:
    """The shared templates (packer/) and the cloud's own, named as they were when all lived in
    packer/ (`<cloud>.pkr.hcl.j2`), so moving them into the cloud's folder moved no key."""
    cloud = registry.get(cloud_name)
    files = {path.relative_to(PACKER_DIR).as_posix(): path for path in PACKER_DIR.rglob("*")
             if path.is_file() and "__pycache__" not in path.parts}
    files[cloud.template] = cloud.template_path
    return files_digest(files)


def build_settings(cloud: str, settings: dict[str, Any], arch: str = DEFAULT_ARCH) -> dict[str, Any]:
    """The settings that shape the image; where it is copied or shared to does not."""
    return registry.get(cloud).build_settings(settings, arch)


def build_key(cell: Cell, pins: dict[str, Any]) -> str:
    """Everything that determines the image, and nothing that does not (mirrors, names, time)."""
    return _digest(key_material(cell, pins))


def key_material(cell: Cell, pins: dict[str, Any]) -> dict[str, Any]:
    """What the build key hashes, one entry per input."""
    return {
        "schema": BUILD_KEY_SCHEMA,
        "templates": templates_digest(cell.cloud),
        "roles": tree_digest(ANSIBLE_DIR),
        "pins": keyed_pins(pins, cell.arch),
        "os": cell.os,
        "arch": cell.arch,
        "cloud": cell.cloud,
        "strategy": cell.strategy,
        "base_image": cell.base_image,
        "settings": build_settings(cell.cloud, cell.settings, cell.arch),
        "ansible_vars": cell.ansible_vars,
        # Only a variant cell has this input, so the default cells' keys are what they were.
        **({"variant": variant_material(cell.cloud, cell.variant)} if cell.variant else {}),
        # Only a baked Flatcar cell has this one: its bake (imagebuilder/flatcar.py and its build step).
        **({"flatcar_bake": flatcar_bake_digest()} if cell.os_info.family == "flatcar" and cell.strategy == "bake"
           else {}),
    }


# Every key hashed the amd64 and arm64 sums of every pinned file before other arches were pinned;
# a cell of another arch (ppc64le) hashes its own sums too, so pinning them moved no key.
KEYED_SUM_ARCHES = ("amd64", "arm64")


def keyed_pins(pins: dict[str, Any], arch: str) -> dict[str, Any]:
    """The minor's pins as a cell's key hashes them: each file's sums of KEYED_SUM_ARCHES and the cell's arch."""
    def files(entries: dict[str, Any]) -> dict[str, Any]:
        return {name: {**entry, "sha256": {a: s for a, s in entry["sha256"].items()
                                           if a in KEYED_SUM_ARCHES or a == arch}}
                for name, entry in entries.items()}

    components = {name: {**component, "files": files(component["files"])}
                  for name, component in pins.get("components", {}).items()}
    return {**pins, "components": components} if "components" in pins else pins


@lru_cache(maxsize=1)
def flatcar_bake_digest() -> str:
    return files_digest({path.name: path for path in FLATCAR_BAKE_FILES})


def variant_material(cloud: str, variant: str) -> dict[str, Any]:
    """What a variant changes besides its settings and base image, which the key hashes already."""
    return {"name": variant, "build": registry.get(cloud).settings.VARIANTS[variant].build}


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# Hex digits per input: 11 inputs make 54 characters with their dashes, within a GCP label value
# (63, [a-z0-9_-]) and one tag everywhere else; enough to tell what moved, not to identify it.
INPUT_DIGEST_LENGTH = 4
# How `plan --changed` names a moved input; an input not here is named by its key.
INPUT_LABELS = {"roles": "roles/templates", "templates": "roles/templates", "base_image": "base image",
                "flatcar_bake": "Flatcar bake",
                "ansible_vars": "ansible vars", "schema": "build key schema"}


def key_inputs(material: dict[str, Any]) -> dict[str, str]:
    """A short digest per input of the build key's material, in the material's order."""
    return {name: _digest(value)[:INPUT_DIGEST_LENGTH] for name, value in material.items()}


def encode_inputs(inputs: dict[str, str]) -> str:
    """The digests as one tag or label value, in order: "1a2b-3c4d-…"."""
    return "-".join(inputs.values())


def moved_inputs(recorded: str, inputs: dict[str, str]) -> tuple[str, ...]:
    """What moved between the inputs recorded on an image (encode_inputs) and a cell's inputs."""
    before = recorded.split("-") if recorded else []
    if len(before) != len(inputs):
        return ("inputs not recorded on the image",)
    moved = [INPUT_LABELS.get(name, name.replace("_", " "))
             for (name, digest), was in zip(inputs.items(), before) if digest != was]
    return tuple(dict.fromkeys(moved)) or ("build key",)
