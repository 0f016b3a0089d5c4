"""Render each cell as a self-contained Packer HCL2 build directory (templates in packer/)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from imagebuilder import __version__, flatcar, hcl, packer, sbom
from imagebuilder.atomicfile import write_atomically
from imagebuilder.clouds import registry
from imagebuilder.config import ANSIBLE_DIR, PACKER_DIR, PROJECT_ROOT
from imagebuilder.metadata import ImageMetadata, metadata_for
from imagebuilder.planner import Cell

# Packer 1.7 moved builders into plugins; from 1.10 `required_plugins` + `packer init` are needed.
MODERN_PACKER = registry.PLUGIN_PACKER
PLAYBOOK = "node.yml"
# Before the roles: cloud-init has finished (it may restart sshd and hold the apt lock).
WAIT_FOR_CLOUD_INIT = "cloud-init status --wait"
COMMON_BUILD = "_common/build.pkr.hcl.j2"  # the build step a cloud's template includes (build_template)


@dataclass(frozen=True)
class RenderedCell:
    cell: Cell
    directory: Path
    files: tuple[str, ...]


def _environment() -> jinja2.Environment:
    return _environment_for(tuple(registry.template_dirs()))


@lru_cache(maxsize=None)
def _environment_for(cloud_dirs: tuple[Path, ...]) -> jinja2.Environment:
    env = jinja2.Environment(
        # The shared templates, then each cloud's folder (its <cloud>.pkr.hcl.j2).
        # (and Flatcar's bake: its build step, outside packer/ so that no other cell's key moves with it).
        loader=jinja2.FileSystemLoader([PACKER_DIR, *cloud_dirs, flatcar.TEMPLATE_DIR]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["hcl"] = hcl.value
    env.filters["hcl_type"] = hcl.type_of
    env.filters["hcl_attributes"] = hcl.attributes
    return env


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def cell_metadata(cell: Cell) -> ImageMetadata:
    return metadata_for(cell, __version__, git_commit())


def ansible_vars(cell: Cell) -> dict[str, Any]:
    """The cell's variables for the roles (the contract in docs/architecture.md)."""
    return {
        "imagebuilder_build_key": cell.build_key,
        "imagebuilder_cell_id": cell.id,
        "imagebuilder_version": __version__,
        "imagebuilder_git_commit": git_commit(),
        "imagebuilder_os": cell.os,
        "imagebuilder_os_family": cell.os_info.family,
        "imagebuilder_cloud": cell.cloud,
        "imagebuilder_platform": registry.get(cell.cloud).platform,
        "imagebuilder_arch": cell.arch,
        "imagebuilder_kubernetes_minor": cell.kubernetes,
        "imagebuilder_versions": cell.versions,
        "imagebuilder_pause_image": cell.pause_image,
        "imagebuilder_downloads": {name: d.model_dump() for name, d in cell.downloads.items()},
        "imagebuilder_images": cell.images,
        "imagebuilder_registry_plain_http": cell.registry_plain_http,
        # Which subscription the roles register with: its name only, the credentials stay in the environment.
        **({"imagebuilder_subscription": cell.os_info.subscription.key} if cell.os_info.subscription else {}),
        **cell.ansible_vars,
    }


def _resolved(cell: Cell) -> dict[str, Any]:
    """The base image the plan resolved (baseimages.py); {} when planned --offline."""
    return dict(cell.base_image.get("resolved") or {})


def render_context(cell: Cell) -> registry.RenderContext:
    metadata = cell_metadata(cell)
    return registry.RenderContext(metadata_tags=metadata.to_tags(), gcp_labels=metadata.to_gcp_labels(),
                                  resolved=_resolved(cell))


def packer_variables(cell: Cell, cell_dir: Path) -> dict[str, Any]:
    relative = Path(os.path.relpath(ANSIBLE_DIR, cell_dir.resolve())).as_posix()
    cloud = registry.get(cell.cloud)
    context = render_context(cell)
    return {
        "cell_id": cell.id,
        "build_key": cell.build_key,
        "kubernetes_version": cell.kubernetes_version,
        "image_name_prefix": cloud.image_name_prefix(cell),
        "ssh_username": cloud.ssh_user or cell.os_info.ssh_user,
        "ansible_playbook": f"{relative}/{PLAYBOOK}",
        "ansible_config": f"{relative}/ansible.cfg",
        "metadata": context.metadata_tags,
        "versions": cell.versions,
        **cloud.packer_variables(cell, context),
    }


def sbom_context() -> dict[str, Any]:
    """What the SBOM step of the templates and its gathering script are rendered with (sbom.py's names)."""
    return {"script": sbom.INPUT_SCRIPT, "remote": sbom.INPUT_REMOTE, "file": sbom.INPUT_FILE,
            "header": sbom.INPUT_HEADER, "end": sbom.INPUT_END, "os_release_files": sbom.OS_RELEASE_FILES,
            "release_file": sbom.RELEASE_FILE, "dpkg_status": sbom.DPKG_STATUS, "dpkg_admin_dir": sbom.DPKG_ADMIN_DIR,
            "dpkg_format": sbom.DPKG_FORMAT, "rpm_db_dirs": sbom.RPM_DB_DIRS, "rpm_format": sbom.RPM_FORMAT,
            "artifacts_dir": sbom.ARTIFACTS_DIR}


def render_sbom_script() -> str:
    """The gathering script a Packer build runs in the image (packer/_common/sbom-input.sh.j2)."""
    return _environment().get_template("_common/sbom-input.sh.j2").render({"sbom": sbom_context()})


def modern(packer_version: tuple[int, int, int] | None) -> bool:
    """Whether that Packer (None: the modern form) has its builders as plugins (`required_plugins`)."""
    return packer_version is None or packer_version >= MODERN_PACKER


def render_files(cell: Cell, cell_dir: Path, packer_version: tuple[int, int, int] | None) -> dict[str, str]:
    """The file name -> content of one cell's build directory."""
    env = _environment()
    cloud = registry.get(cell.cloud)
    variables = packer_variables(cell, cell_dir)
    own = cloud.template_context(cell)
    if not modern(packer_version):
        own = {**own, **cloud.old_packer_context(cell)}
    if flatcar.baked_by_packer(cell) and "build_template" not in own:
        raise flatcar.unbaked(cell)
    wait = [WAIT_FOR_CLOUD_INIT] if own.pop("wait_for_cloud_init", True) else []
    pre_provision = [*wait, *own.pop("provision_first", [])]
    context = {"provision_node": True, "provision_last": [], "build_template": COMMON_BUILD, **own, "cell": cell,
               "variables": variables,
               "builder": own.pop("builder", cloud.builder), "base_pinned": bool(_resolved(cell)),
               "pre_provision": pre_provision, "sbom": sbom_context()}
    files = {
        "variables.pkr.hcl": env.get_template("_common/variables.pkr.hcl.j2").render(context),
        "cell.auto.pkrvars.hcl": env.get_template("_common/cell.auto.pkrvars.hcl.j2").render(context),
        f"{cell.cloud}.pkr.hcl": env.get_template(cloud.template).render(context),
        "ansible-vars.json": json.dumps(ansible_vars(cell), indent=2, sort_keys=True) + "\n",
        sbom.INPUT_SCRIPT: render_sbom_script(),
    }
    # A builder only a plugin has is declared whatever the Packer: the directory is for one that installs it.
    if cloud.plugin is not None and (modern(packer_version) or not cloud.packer_builtin):
        plugin = {"name": cloud.plugin.name, "source": cloud.plugin.source, "version": cloud.plugin.version}
        files["plugins.pkr.hcl"] = env.get_template("_common/plugins.pkr.hcl.j2").render({**context, "plugin": plugin})
    return files


def write_cell(cell: Cell, cell_dir: Path, files: dict[str, str]) -> RenderedCell:
    cell_dir.mkdir(parents=True, exist_ok=True)
    for stale in cell_dir.glob("*.pkr.hcl"):
        if stale.name not in files:
            stale.unlink()
    for name, content in files.items():
        _write_if_changed(cell_dir / name, content)
    return RenderedCell(cell=cell, directory=cell_dir, files=tuple(sorted(files)))


def _write_if_changed(path: Path, content: str) -> None:
    if path.exists() and path.read_text() == content:
        return
    write_atomically(path, content)


def render_cells(cells: list[Cell], output_dir: Path,
                 packer_version: tuple[int, int, int] | None = None) -> list[RenderedCell]:
    """Render every cell in memory first, so a template error writes nothing; then write."""
    rendered = [(cell, output_dir / cell.id) for cell in cells]
    contents = [render_files(cell, cell_dir, packer_version) for cell, cell_dir in rendered]
    return [write_cell(cell, cell_dir, files) for (cell, cell_dir), files in zip(rendered, contents)]


def validate_env(cell: Cell) -> dict[str, str] | None:
    """The environment `packer validate` of a cell runs with: the cloud's stand-ins for the variables its
    builder's configuration check demands, where unset (registry.Cloud.validate_env); None: inherited."""
    stand_ins = registry.get(cell.cloud).validate_environment()
    return {**stand_ins, **os.environ} if stand_ins else None


def validate(rendered: RenderedCell, packer_version: tuple[int, int, int] | None) -> packer.ValidateResult:
    """`packer validate` of a rendered cell; for a builder this Packer lacks (only a plugin has it,
    registry.Cloud.plugin_missing) its HCL is parsed instead, and the result says so."""
    missing = registry.get(rendered.cell.cloud).plugin_missing(packer_version)
    if missing:
        return packer.parse_only(rendered.directory, missing)
    return packer.validate(rendered.directory, validate_env(rendered.cell))
