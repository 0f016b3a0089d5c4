"""The clouds: one folder each, found here, imported only when used.

A cloud is a package ``imagebuilder/clouds/<name>/`` (or ``<dir>/<name>/`` for a directory named
in ``IMAGEBUILDER_CLOUD_PATH``, separated by ``:``) whose ``__init__.py`` defines ``CLOUD``, an
instance of a ``Cloud`` subclass. The folder holds everything about that cloud: its settings
model, image naming, Packer template (``<name>.pkr.hcl.j2``) and variables, the artifact id
parser, the base image lookup, its image store and in-use inventory (named by import path, so
the SDK loads only when that cloud is used), and its cost figures. Nothing outside the folder
names the cloud; every default lives in the ``Cloud`` base class below, once.

The package's ``__init__.py`` must import no cloud SDK: every command reads it (the matrix
knows its clouds from here), and a cloud that is not declared must cost nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from imagebuilder.errors import UserError
from imagebuilder.models import CloudSettings
from imagebuilder.osinfo import DEFAULT_ARCH

if TYPE_CHECKING:
    from imagebuilder.artifact import Artifact
    from imagebuilder.baseimages import Resolver
    from imagebuilder.build import Job
    from imagebuilder.planner import Cell

BUILTIN_DIR = Path(__file__).resolve().parent
CLOUD_PATH_VARIABLE = "IMAGEBUILDER_CLOUD_PATH"
# Packer's artifact id of builders that make one image: the id itself, in the build's region.
DEFAULT_REGION = "default"
# The first Packer that installs plugins (`required_plugins`, `packer init`).
PLUGIN_PACKER = (1, 7, 0)


def cluster_api_image_name(os_id: str, kubernetes_version: str, arch: str) -> str:
    """image-builder's `cluster-api-<build name>-v<kubernetes semver>-<timestamp>`, the name most of
    its providers give an image (`{timestamp}` is filled by Packer)."""
    return f"cluster-api-{os_id}{'' if arch == DEFAULT_ARCH else f'-{arch}'}-v{kubernetes_version}-{{timestamp}}"


@dataclass(frozen=True)
class Plugin:
    """The Packer plugin of a builder, for `required_plugins` (Packer >= 1.7)."""

    name: str
    source: str
    version: str


@dataclass(frozen=True)
class RenderContext:
    """What render knows of a cell that a cloud's Packer variables may use."""

    metadata_tags: dict[str, str]  # the image metadata as tags (metadata.ImageMetadata.to_tags)
    gcp_labels: dict[str, str]  # the same as GCP label values
    resolved: dict[str, Any]  # the base image the plan resolved; {} when planned --offline


class Cloud:
    """One cloud: a subclass per folder overrides what differs from these defaults."""

    name: ClassVar[str]
    settings: ClassVar[type[CloudSettings]]  # the model of `clouds.<name>` in the matrix, with its defaults
    order: ClassVar[int] = 100  # where its cells sort in a plan (built-in clouds first)
    builder: ClassVar[str]  # Packer builder type
    plugin: ClassVar[Plugin | None] = None
    # Packer before 1.7 carries this builder built in (so 1.6.6 validates and builds it). False: only
    # its plugin has it, for Packer >= 1.7 after `packer init`; render then always writes its
    # required_plugins, and with an older Packer `validate` parses the HCL instead and `build` stops
    # the cell before Packer (plugin_missing).
    packer_builtin: ClassVar[bool] = True
    # "module:Class" of its ImageStore. None: imagebuilder does not manage this cloud's images yet
    # (no API, emulator or stand-in to test a store against). Then `build` builds its cells every run
    # (no lookup of an existing image) and publishes nothing: the image stays where Packer leaves it,
    # `image_location`; `images` and `prune` say so and skip the cloud. This is the one place it is set.
    store_path: ClassVar[str | None]
    image_location: ClassVar[str] = "the place its builder writes to"  # where Packer leaves an unmanaged image
    store_name: ClassVar[str | None] = None  # the catalogue its images go to, when not its own name
    sdk_extra: ClassVar[str | None] = None  # the pip extra (pyproject) that brings its SDK
    ssh_user: ClassVar[str | None] = None  # the build's SSH user; None: the OS's default user
    estimate_s: ClassVar[float] = 600.0  # first-run build duration estimate, for ordering the queue
    image_gib: ClassVar[float] = 4.0  # storage of one stored image copy (plan --compare)
    imports_stock_image: ClassVar[bool] = False  # a stock vendor image must be imported before use
    # A stage between deprecated and deleted in which new uses are refused and running ones go on
    # (GCE's OBSOLETE); retention passes through it (ImageStore.obsolete) before deleting.
    obsolete_stage: ClassVar[bool] = False
    # kubernetes-sigs/image-builder's provider names for this cloud (images/capi/Makefile): accepted
    # for it under `clouds:` in the matrix; the first names its make targets (image_builder_target).
    image_builder_names: ClassVar[tuple[str, ...]] = ()
    # The arches this cloud builds here; None: every arch the OS table has references for. A cell
    # of another arch is planned (the OS table has its references) but refused before its build
    # starts, in one line with `arch_reason` (Cloud.arch_refused, pipeline.unbuilt_arch).
    arches: ClassVar[tuple[str, ...] | None] = None
    arch_reason: ClassVar[str] = ""
    # Environment variables the builder's configuration check (`packer validate`) demands, with
    # stand-in values used only by validate and only where unset (validate_environment).
    validate_env: ClassVar[dict[str, str]] = {}
    # The platform whose guest data its images take from the roles (ansible/roles/providers: cloud-init
    # datasources, guest agents, chrony), passed as imagebuilder_platform; None: its own name. The
    # local outputs run where their disk is deployed: raw and KubeVirt on KVM, an OVA on vSphere.
    guest_platform: ClassVar[str | None] = None
    directory: Path  # set by the registry: the cloud's folder

    @property
    def platform(self) -> str:
        return self.guest_platform or self.name

    @property
    def managed(self) -> bool:
        """Its images have a store (list, skip, publish, prune); see `store_path`."""
        return self.store_path is not None

    def not_managed(self) -> str:
        """The one line that says an unmanaged cloud's images are left where Packer puts them."""
        return f"{self.name}: images are not managed yet (Packer leaves them in {self.image_location})"

    def plugin_missing(self, packer_version: tuple[int, int, int] | None) -> str | None:
        """Why this Packer cannot run this cloud's builder (its plugin only, and Packer too old to
        install plugins); None when it can or no Packer is known."""
        if self.packer_builtin or packer_version is None or packer_version >= PLUGIN_PACKER:
            return None
        version = ".".join(map(str, packer_version))
        source = f" ({self.plugin.source})" if self.plugin else ""
        return f"Packer {version} lacks the {self.builder} plugin builder{source}, which needs Packer >= 1.7 and `packer init`"

    def arch_refused(self, arch: str) -> str | None:
        """Why this cloud cannot build an image of this arch here (one clause), or None."""
        if self.arches is None or arch in self.arches:
            return None
        return f"{self.name} builds {', '.join(self.arches)} images only{f' ({self.arch_reason})' if self.arch_reason else ''}"

    @property
    def default_arch(self) -> str:
        """The arch a target name leaves out: the cloud's only one, else the project's default."""
        return self.arches[0] if self.arches and len(self.arches) == 1 else DEFAULT_ARCH

    # -- settings --------------------------------------------------------------------------
    def settings_model(self) -> type[CloudSettings]:
        return self.settings

    def build_settings(self, settings: dict[str, Any], arch: str = DEFAULT_ARCH) -> dict[str, Any]:
        """The settings that shape the image (of this arch); where it is copied or shared to does not."""
        model = self.settings_model()
        outside_key = model.OUTSIDE_BUILD_KEY | model.COMMON_OUTSIDE_BUILD_KEY
        return {name: value for name, value in settings.items() if name not in outside_key}

    def copies_per_image(self, settings: dict[str, Any]) -> int:
        """Stored copies of one image (regions, replicas)."""
        return 1

    def base_image(self, reference: dict[str, Any] | None, os_info: Any, arch: str) -> dict[str, Any] | None:
        """The base image reference of a cell: the OS table's entry for this cloud and arch
        (imagebuilder/osinfo.py, passed in; None where the vendor publishes none), or the
        cloud's own."""
        return reference

    # -- naming ----------------------------------------------------------------------------
    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        """`{timestamp}` is filled by Packer at build time."""
        return f"{os_id}-kube-v{kubernetes_version}-{{timestamp}}"

    def image_builder_target(self, os_id: str, arch: str, variant: str | None) -> str:
        """image-builder's make target of a cell, `build-<provider>-<os>[-<arch>][-<variant>]`
        (`build-ami-ubuntu-2404`); the arch only where it is not the default (the cloud's only
        arch, else amd64), as in cell ids."""
        provider = self.image_builder_names[0] if self.image_builder_names else self.name
        return "-".join(["build", provider, os_id, *([arch] if arch != self.default_arch else []),
                         *([variant] if variant else [])])

    def image_builder_targets(self, os_id: str, arch: str, variant: str | None) -> tuple[str, ...]:
        """Every image-builder target name a cell answers to: its own (image_builder_target) first,
        then any other name image-builder gives the same image (qemu's `-cloudimg`)."""
        return (self.image_builder_target(os_id, arch, variant),)

    def image_name_prefix(self, cell: Cell) -> str:
        return cell.image_name.split("/")[-1].removesuffix("{timestamp}")

    # -- render ----------------------------------------------------------------------------
    @property
    def template(self) -> str:
        """The Packer template's name in the render's template search path."""
        return f"{self.name}.pkr.hcl.j2"

    @property
    def template_path(self) -> Path:
        """The template's file (a local output may build with another folder's template)."""
        return self.directory / self.template

    def packer_variables(self, cell: Cell, context: RenderContext) -> dict[str, Any]:
        return {}

    def template_context(self, cell: Cell) -> dict[str, Any]:
        """Values the cloud's template reads besides the variables. The shared build step reads
        `provision_first` (shell commands before the roles), `provision_last` (shell commands after
        them), `provision_node` (False: no roles and no SBOM, the OS alone, as a base template) and
        `builder` (the Packer builder of this cell, when not `Cloud.builder`)."""
        return {}

    def os_alone(self, cell: Cell) -> bool:
        """The cell's image is the OS alone, no roles and no Kubernetes: a base other builds start from
        (the ova `base` flavour). The local builders (offline, the Flatcar bake) and the boot test follow it."""
        return False

    def old_packer_context(self, cell: Cell) -> dict[str, Any]:
        """What template_context changes for a Packer before 1.7 (its builders built in, older
        than the plugin this cloud names): options that Packer lacks left out."""
        return {}

    def validate_environment(self) -> dict[str, str]:
        """`packer validate` of this cloud's cells with these environment variables where unset:
        stand-ins for what the builder's configuration check demands be non-empty (its own
        credential variables), never real values; the check makes no connection."""
        return dict(self.validate_env)

    # -- build -----------------------------------------------------------------------------
    def artifact_ids(self, builder_type: str, artifact_id: str) -> dict[str, str]:
        """region -> image id from Packer's artifact_id."""
        return {DEFAULT_REGION: artifact_id}

    def resolve_base(self, resolver: Resolver, cell: Cell) -> dict[str, Any]:
        """The image the cell's base reference names today (baseimages.py)."""
        return {}

    def variant_unbuilt(self, cell: Cell, packer_version: tuple[int, int, int] | None = None) -> str | None:
        """Why this variant cell cannot be built as its name says here, with that Packer (None: the
        modern form), in one line; or None.
        By default a variant that changes the template (Variant.build) is not rendered by it:
        a cloud whose template renders its variants says so by overriding this."""
        variant = self.settings.VARIANTS.get(cell.variant or "")
        if variant is None or not variant.build:
            return None
        settings = ", ".join(f"{name} {value}" for name, value in variant.build.items())
        return (f"{cell.id}: the {cell.variant} variant's {settings} is not in the {cell.cloud} template yet, "
                f"so the image would not be {cell.variant} | fix: exclude {{cloud: {cell.cloud}, variant: "
                f"{cell.variant}}} until it is")

    def firmware(self, cell: Cell) -> str:
        """"efi" for a cell whose variant asks for UEFI firmware (its Variant.build `firmware`), else "bios"."""
        variant = self.settings.VARIANTS.get(cell.variant or "")
        return variant.build.get("firmware", "bios") if variant else "bios"

    def prepare(self, job: Job) -> None:
        """Before the builder runs (the qemu target builds its base disk here)."""

    def finish(self, job: Job, artifact: Artifact) -> Artifact | None:
        """After the build, before publishing (the qemu target boot-tests the image here); the
        artifact to publish when the step made other files of it (the raw output's disks), else None."""

    # -- images ----------------------------------------------------------------------------
    @property
    def catalogue(self) -> str:
        return self.store_name or self.name

    def gather_inventory(self, store: Any, min_orphan_age: timedelta, deadline: Any) -> Any:
        """retention.Inventory of the store gathered this cloud's own way (fewer calls); None: the
        generic way (list the images, ask the store about each)."""
        return None


def _search_path() -> list[Path]:
    extra = [Path(entry) for entry in os.environ.get(CLOUD_PATH_VARIABLE, "").split(os.pathsep) if entry]
    return [BUILTIN_DIR, *extra]


def _folders() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in _search_path():
        if not directory.is_dir():
            raise UserError(f"{CLOUD_PATH_VARIABLE}: {directory} is not a directory | fix: name directories "
                            "that hold cloud folders, separated by ':'")
        for folder in sorted(directory.iterdir()):
            if (folder / "__init__.py").is_file() and not folder.name.startswith(("_", ".")):
                found.setdefault(folder.name, folder)
    return found


def _load(name: str, folder: Path) -> Cloud:
    module_name = f"imagebuilder.clouds.{name}"
    if folder.parent != BUILTIN_DIR and module_name not in sys.modules:
        # A cloud from IMAGEBUILDER_CLOUD_PATH imports as if it were built in, so its folder's
        # modules name each other the same way.
        spec = importlib.util.spec_from_file_location(module_name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        if spec is None or spec.loader is None:
            raise UserError(f"{folder}: cannot load this cloud folder | fix: give it an __init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    module = importlib.import_module(module_name)
    cloud = getattr(module, "CLOUD", None)
    if not isinstance(cloud, Cloud):
        raise UserError(f"{folder / '__init__.py'}: defines no CLOUD | fix: CLOUD = <a Cloud subclass>()")
    if cloud.name != name:
        raise UserError(f"{folder / '__init__.py'}: CLOUD.name is '{cloud.name}' | fix: name it '{name}', as its folder")
    cloud.directory = folder
    return cloud


def clouds() -> dict[str, Cloud]:
    """Every cloud, in plan order."""
    return _loaded(os.environ.get(CLOUD_PATH_VARIABLE, ""))[0]


def check() -> None:
    """Raise the first problem met loading the cloud folders (the CLI calls it first thing: the
    folders load when modules are imported, before any command can report an error)."""
    problems = _loaded(os.environ.get(CLOUD_PATH_VARIABLE, ""))[1]
    if problems:
        raise UserError(problems[0])


@lru_cache(maxsize=None)
def _loaded(search_path: str) -> tuple[dict[str, Cloud], tuple[str, ...]]:
    """The clouds that load, and one line for each folder that does not (kept for check())."""
    loaded: list[Cloud] = []
    problems: list[str] = []
    try:
        folders = _folders()
    except UserError as error:
        return {}, (str(error),)
    for name, folder in folders.items():
        try:
            loaded.append(_load(name, folder))
        except UserError as error:
            problems.append(str(error))
        except Exception as error:  # noqa: BLE001 - a broken folder is one line, the other clouds still load
            problems.append(f"{folder}: cannot load this cloud ({type(error).__name__}: {' '.join(str(error).split())}) "
                            "| fix: correct the folder or remove it from IMAGEBUILDER_CLOUD_PATH")
    clouds = {cloud.name: cloud for cloud in sorted(loaded, key=lambda cloud: (cloud.order, cloud.name))}
    return clouds, tuple(problems)


def names() -> tuple[str, ...]:
    return tuple(clouds())


def get(name: str) -> Cloud:
    try:
        return clouds()[name]
    except KeyError:
        raise UserError(f"unknown cloud '{name}' | fix: use one of {', '.join(names())}") from None


def has_obsolete_stage(catalogue: str) -> bool:
    cloud = clouds().get(catalogue)
    return cloud is not None and cloud.obsolete_stage


def template_dirs() -> list[Path]:
    return [cloud.directory for cloud in clouds().values()]


def stores() -> dict[str, str]:
    """catalogue name -> "module:Class" of its store ("local" is the local catalogue)."""
    found = {"local": "imagebuilder.clouds.local:LocalCatalogue"}
    for cloud in clouds().values():
        if cloud.store_path is not None:
            found.setdefault(cloud.catalogue, cloud.store_path)
    return found


def unmanaged() -> dict[str, Cloud]:
    """The clouds whose images imagebuilder does not manage yet (`store_path = None`)."""
    return {name: cloud for name, cloud in clouds().items() if not cloud.managed}


def aliases() -> dict[str, str]:
    """A cloud whose images live in another catalogue -> that catalogue ("qemu" -> "local")."""
    return {cloud.name: cloud.catalogue for cloud in clouds().values()
            if cloud.managed and cloud.catalogue != cloud.name}


def image_builder_aliases() -> dict[str, str]:
    """image-builder's provider name -> our cloud ("ami" -> "aws"): the one table, from the folders."""
    return {alias: cloud.name for cloud in clouds().values() for alias in cloud.image_builder_names
            if alias != cloud.name}


def extras() -> dict[str, str]:
    return {cloud.catalogue: cloud.sdk_extra for cloud in clouds().values() if cloud.sdk_extra}


def load_object(path: str) -> Any:
    """The object a "module:attribute" path names."""
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
