"""Render each cell as a self-contained Packer HCL2 build directory (templates in packer/)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import jinja2

from imagebuilder import __version__, azure_version, hcl
from imagebuilder.config import ANSIBLE_DIR, PACKER_DIR, PROJECT_ROOT
from imagebuilder.metadata import ImageMetadata, metadata_for
from imagebuilder.planner import Cell, azure_image_definition, gcp_image_family

# Packer 1.7 moved builders into plugins; from 1.10 `required_plugins` + `packer init` are needed.
MODERN_PACKER = (1, 7, 0)
BUILDERS = {"qemu": "qemu", "aws": "amazon-ebs", "gcp": "googlecompute", "openstack": "openstack",
            "azure": "azure-arm"}
PLUGINS = {
    "qemu": ("qemu", "github.com/hashicorp/qemu", ">= 1.1.0"),
    "aws": ("amazon", "github.com/hashicorp/amazon", ">= 1.3.0"),
    "gcp": ("googlecompute", "github.com/hashicorp/googlecompute", ">= 1.1.4"),
    "openstack": ("openstack", "github.com/hashicorp/openstack", ">= 1.1.2"),
    "azure": ("azure", "github.com/hashicorp/azure", ">= 2.1.0"),
}
PLAYBOOK = "node.yml"
# The qemu build logs in as this user, made by the build's NoCloud seed and removed at shutdown.
QEMU_BUILD_USER = "packer"
# Before the roles: cloud-init has finished (it may restart sshd and hold the apt lock).
WAIT_FOR_CLOUD_INIT = "cloud-init status --wait"
# A locally built base disk has no bootloader yet: the build installs it.
INSTALL_BOOTLOADER = ("sudo grub-install /dev/vda", "sudo update-grub")


@dataclass(frozen=True)
class RenderedCell:
    cell: Cell
    directory: Path
    files: tuple[str, ...]


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKER_DIR),
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
        "imagebuilder_arch": cell.arch,
        "imagebuilder_kubernetes_minor": cell.kubernetes,
        "imagebuilder_versions": cell.versions,
        "imagebuilder_pause_image": cell.pause_image,
        "imagebuilder_downloads": {name: d.model_dump() for name, d in cell.downloads.items()},
        "imagebuilder_images": cell.images,
        "imagebuilder_registry_plain_http": cell.registry_plain_http,
        **cell.ansible_vars,
    }


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _resolved(cell: Cell) -> dict[str, Any]:
    """The base image the plan resolved (baseimages.py); {} when planned --offline."""
    return dict(cell.base_image.get("resolved") or {})


def _qemu_variables(cell: Cell) -> dict[str, Any]:
    settings = cell.settings
    resolved = _resolved(cell)
    return {
        "qemu_accelerator": settings["accelerator"] if settings["accelerator"] != "auto" else "tcg",
        "qemu_disk_size_mb": settings["disk_size_mb"],
        "qemu_memory_mb": settings["memory_mb"],
        "qemu_cpus": settings["cpus"],
        # base/disk.img is the vendor image the plan resolved; the Debian base is built here,
        # from the InRelease files the plan resolved (distributions/debian.py BaseSpec.releases).
        "qemu_base_checksum": f"sha256:{resolved['sha256']}" if "sha256" in resolved else "none",
    }


def _aws_variables(cell: Cell) -> dict[str, Any]:
    settings = cell.settings
    return {
        "aws_region": settings["regions"][0],
        "aws_instance_type": settings["instance_type"],
        "aws_subnet_id": _text(settings["subnet_id"]),
        "aws_volume_size_gb": settings["volume_size_gb"],
        "aws_root_device_name": "/dev/sda1",
        "aws_source_ami_name": cell.base_image["name_filter"],
        "aws_source_ami_owner": cell.base_image["owner"],
        **({"aws_source_ami": _resolved(cell)["ami"]} if _resolved(cell) else {}),
    }


def _gcp_variables(cell: Cell) -> dict[str, Any]:
    settings = cell.settings
    return {
        "gcp_project_id": settings["project_id"],
        "gcp_zone": settings["zone"],
        "gcp_machine_type": settings["machine_type"],
        "gcp_network": _text(settings["network"]),
        "gcp_subnetwork": _text(settings["subnetwork"]),
        "gcp_source_image_family": cell.base_image["family"],
        "gcp_source_image_project": cell.base_image["project"],
        **({"gcp_source_image": _resolved(cell)["image"]} if _resolved(cell) else {}),
        "gcp_image_family": gcp_image_family(cell.os, cell.kubernetes, cell.arch, cell.variant),
        "gcp_image_labels": cell_metadata(cell).to_gcp_labels(),
        "gcp_storage_locations": settings["storage_locations"],
    }


def _openstack_variables(cell: Cell) -> dict[str, Any]:
    settings = cell.settings
    info = cell.os_info
    return {
        "openstack_cloud": _text(settings["cloud"]),
        "openstack_flavor": settings["flavor"],
        "openstack_networks": settings["networks"],
        "openstack_floating_ip_network": _text(settings["floating_ip_network"]),
        "openstack_source_image": cell.base_image["image_name"],
        **({"openstack_source_image_id": _resolved(cell)["image_id"]} if _resolved(cell) else {}),
        "openstack_visibility": settings["visibility"],
        "openstack_properties": {"os_distro": info.distro, "os_version": info.version,
                                 "hw_disk_bus": "scsi", "hw_scsi_model": "virtio-scsi",
                                 "hw_qemu_guest_agent": "yes"},
    }


def _azure_variables(cell: Cell) -> dict[str, Any]:
    settings = cell.settings
    definition = azure_image_definition(cell.os, cell.kubernetes, cell.arch, cell.variant)
    return {
        "azure_resource_group": settings["resource_group"],
        "azure_gallery": settings["gallery"],
        "azure_location": settings["location"],
        "azure_vm_size": settings["vm_size"],
        "azure_target_regions": settings["target_regions"] or [settings["location"]],
        "azure_image_publisher": cell.base_image["publisher"],
        "azure_image_offer": cell.base_image["offer"],
        "azure_image_sku": cell.base_image["sku"],
        **({"azure_image_version": _resolved(cell)["version"]} if _resolved(cell) else {}),
        "azure_image_definition": definition,
        "azure_version_prefix": azure_version.version_prefix(cell.kubernetes),
    }


CLOUD_VARIABLES: dict[str, Callable[[Cell], dict[str, Any]]] = {
    "qemu": _qemu_variables,
    "aws": _aws_variables,
    "gcp": _gcp_variables,
    "openstack": _openstack_variables,
    "azure": _azure_variables,
}


def packer_variables(cell: Cell, cell_dir: Path) -> dict[str, Any]:
    relative = Path(os.path.relpath(ANSIBLE_DIR, cell_dir.resolve())).as_posix()
    prefix = cell.image_name.split("/")[-1].removesuffix("{timestamp}")
    return {
        "cell_id": cell.id,
        "build_key": cell.build_key,
        "kubernetes_version": cell.kubernetes_version,
        "image_name_prefix": prefix if cell.cloud != "azure" else f"{cell.id}-",
        "ssh_username": QEMU_BUILD_USER if cell.cloud == "qemu" else cell.os_info.ssh_user,
        "ansible_playbook": f"{relative}/{PLAYBOOK}",
        "ansible_config": f"{relative}/ansible.cfg",
        "metadata": cell_metadata(cell).to_tags(),
        "versions": cell.versions,
        **CLOUD_VARIABLES[cell.cloud](cell),
    }


def render_files(cell: Cell, cell_dir: Path, packer_version: tuple[int, int, int] | None) -> dict[str, str]:
    """The file name -> content of one cell's build directory."""
    env = _environment()
    variables = packer_variables(cell, cell_dir)
    direct_kernel_boot = cell.cloud == "qemu" and cell.base_image.get("source") == "local"
    pre_provision = [WAIT_FOR_CLOUD_INIT, *(INSTALL_BOOTLOADER if direct_kernel_boot else ())]
    context = {"cell": cell, "variables": variables, "builder": BUILDERS[cell.cloud], "base_pinned": bool(_resolved(cell)),
               "direct_kernel_boot": direct_kernel_boot, "pre_provision": pre_provision,
               "azure_build_minute": azure_version.hcl_patch_expression("local.timestamp")}
    files = {
        "variables.pkr.hcl": env.get_template("_common/variables.pkr.hcl.j2").render(context),
        "cell.auto.pkrvars.hcl": env.get_template("_common/cell.auto.pkrvars.hcl.j2").render(context),
        f"{cell.cloud}.pkr.hcl": env.get_template(f"{cell.cloud}.pkr.hcl.j2").render(context),
        "ansible-vars.json": json.dumps(ansible_vars(cell), indent=2, sort_keys=True) + "\n",
    }
    if packer_version is None or packer_version >= MODERN_PACKER:
        name, source, version = PLUGINS[cell.cloud]
        plugin = {"name": name, "source": source, "version": version}
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
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(content)
    temporary.replace(path)


def render_cells(cells: list[Cell], output_dir: Path,
                 packer_version: tuple[int, int, int] | None = None) -> list[RenderedCell]:
    """Render every cell in memory first, so a template error writes nothing; then write."""
    rendered = [(cell, output_dir / cell.id) for cell in cells]
    contents = [render_files(cell, cell_dir, packer_version) for cell, cell_dir in rendered]
    return [write_cell(cell, cell_dir, files) for (cell, cell_dir), files in zip(rendered, contents)]
