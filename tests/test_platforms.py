"""Every cloud's images take guest data the roles have: the providers role refuses a platform without
cloud-init datasources, so a cloud whose platform is missing there fails every real build in Ansible."""

from __future__ import annotations

import yaml

from conftest import REPO
from imagebuilder import planner, render
from imagebuilder.clouds import registry
from imagebuilder.config import load_matrix

PROVIDERS_DEFAULTS = REPO / "ansible" / "roles" / "providers" / "defaults" / "main.yml"


def datasources() -> dict[str, list[str]]:
    return yaml.safe_load(PROVIDERS_DEFAULTS.read_text())["providers_datasources"]


def test_every_clouds_platform_has_datasources() -> None:
    known = datasources()
    missing = {name: cloud.platform for name, cloud in registry.clouds().items() if cloud.platform not in known}
    assert not missing, f"platforms without cloud-init datasources in {PROVIDERS_DEFAULTS}: {missing}"
    for sources in known.values():
        assert sources[-1] == "None", sources  # a boot without a datasource still comes up


def test_each_planned_cell_passes_a_platform_the_roles_know() -> None:
    known = datasources()
    cells = planner.plan(load_matrix(REPO / "examples" / "image-builder.yaml"))
    platforms = {cell.cloud: render.ansible_vars(cell)["imagebuilder_platform"] for cell in cells}
    assert {platforms[c] for c in ("raw", "kubevirt", "maas", "ova")} == {"qemu", "maas", "vsphere"}
    assert platforms["ova"] == "vsphere" and platforms["raw"] == platforms["kubevirt"] == "qemu"
    assert platforms["aws"] == "aws"  # a cloud's own name where it declares none
    assert set(platforms.values()) <= set(known), set(platforms.values()) - set(known)
