"""Operating systems as data: the shipped cells keep their build keys, and an OS is one table entry.

Run as a script to print tests/data/shipped_build_keys.yaml anew (only when a key is meant to move).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from imagebuilder import osinfo
from imagebuilder.clouds import registry
from imagebuilder.config import ANSIBLE_DIR, PROJECT_ROOT, load_matrix
from imagebuilder.osinfo import OPERATING_SYSTEMS, LocalBase, OsInfo
from imagebuilder.planner import _digest, base_image_for, key_material, plan, templates_digest, tree_digest
from imagebuilder.yamlsource import InputError

DATA = Path(__file__).parent / "data"
PINNED = DATA / "shipped_build_keys.yaml"


def test_the_shipped_cells_keep_their_build_keys() -> None:
    """Every input but the role and template trees (put back as they were when pinned) hashes as before."""
    pinned = yaml.safe_load(PINNED.read_text())
    loaded = load_matrix(PROJECT_ROOT / "matrix.yaml")
    keys = {}
    for cell in plan(loaded):
        material = key_material(cell, loaded.versions.minors[cell.kubernetes].model_dump(mode="json"))
        material.update(templates=pinned["templates"][cell.cloud], roles=pinned["roles"])
        keys[cell.id] = _digest(material)
    assert keys == pinned["build_keys"]


def test_every_base_reference_is_the_one_of_before_the_table() -> None:
    """Byte for byte (as the key hashes them), arm64 too; what was absent is absent."""
    pinned = yaml.safe_load(PINNED.read_text())["base_images"]
    assert set(pinned) == set(OPERATING_SYSTEMS)
    for os_id, clouds in pinned.items():
        for cloud in registry.names():
            for arch in osinfo.ARCHES:
                want = (clouds.get(cloud) or {}).get(arch)  # a cloud without references is an empty line
                have = base_image_for(OPERATING_SYSTEMS[os_id], cloud, arch)
                assert json.dumps(have) == json.dumps(want), (os_id, cloud, arch)


# A made-up OS (the shipped table has AlmaLinux 9 now): what adding one takes is the entry alone.
EXAMPLE = OsInfo(
    id="examplelinux-1", distro="examplelinux", version="1", family="redhat", ssh_user="example",
    images={
        "aws": {"amd64": {"name_filter": "ExampleLinux 1.* x86_64", "owner": "111122223333"},
                "arm64": {"name_filter": "ExampleLinux 1.* aarch64", "owner": "111122223333"}},
        "gcp": {"amd64": {"family": "examplelinux-1", "project": "examplelinux-cloud"}},
        "qemu": {"amd64": {"source": "https://images.examplelinux.invalid/1/cloud/x86_64/"
                                     "ExampleLinux-1-GenericCloud-latest.x86_64.qcow2"}},
    },
    local_base=LocalBase("cloud-image", checksums="CHECKSUM"),
)


@pytest.fixture()
def example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """One more OS, registered as a table entry only (its role data is the redhat family's)."""
    monkeypatch.setitem(OPERATING_SYSTEMS, EXAMPLE.id, EXAMPLE)
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    return tmp_path


def test_an_os_added_as_one_table_entry_plans(example: Path) -> None:
    (example / "m.yaml").write_text('os: [examplelinux-1, debian-12]\nkubernetes: ["1.31"]\n'
                                    'clouds:\n  qemu: {}\n  aws: {}\n  gcp: {project_id: p}\n')
    cells = {cell.id: cell for cell in plan(load_matrix(example / "m.yaml"))}
    assert cells["aws-examplelinux-1-k8s-1.31"].base_image == dict(EXAMPLE.images["aws"]["amd64"])
    assert cells["gcp-examplelinux-1-k8s-1.31"].base_image == {"family": "examplelinux-1",
                                                              "project": "examplelinux-cloud"}
    qemu = cells["qemu-examplelinux-1-k8s-1.31"]
    assert qemu.base_source == {"url": EXAMPLE.images["qemu"]["amd64"]["source"]}
    assert qemu.os_info.family == "redhat" and qemu.strategy == "bake"
    assert len({cell.build_key for cell in cells.values()}) == len(cells) == 6


def test_a_cloud_the_os_lacks_is_refused_at_the_matrix_line(example: Path) -> None:
    (example / "m.yaml").write_text('os: [examplelinux-1]\nkubernetes: ["1.31"]\nclouds:\n  aws: {}\n'
                                    '  azure: {resource_group: g}\n')
    with pytest.raises(InputError) as caught:
        plan(load_matrix(example / "m.yaml"))
    assert str(caught.value) == (f"{example / 'm.yaml'}:5: clouds.azure: examplelinux-1 has no base image on azure "
                                 "(azure-examplelinux-1-k8s-1.31) (exclude {os: examplelinux-1, cloud: azure})")
    (example / "arm.yaml").write_text('os: [examplelinux-1]\nkubernetes: ["1.31"]\nclouds:\n  gcp: {project_id: p}\n'
                                      'arch: arm64\n')
    with pytest.raises(InputError, match=r"arm.yaml:5: arch: examplelinux-1 has no arm64 base image on gcp"):
        plan(load_matrix(example / "arm.yaml"))


def _pinned_text() -> str:
    """The pinned file as it would be written now (the trees and keys of this checkout)."""
    loaded = load_matrix(PROJECT_ROOT / "matrix.yaml")
    header = [line for line in PINNED.read_text().splitlines() if line.startswith("#")][:8]
    lines = [*header, f"roles: {tree_digest(ANSIBLE_DIR)}", "templates:",
             *(f"  {cloud}: {templates_digest(cloud)}" for cloud in registry.names()),
             "build_keys:", *(f"  {cell.id}: {cell.build_key}" for cell in plan(loaded)),
             "# What planner.base_image_for returned at 8b5345f for every OS, cloud and arch (absent: none),",
             "# one JSON reference a line: the OS table must give the same dicts.", "base_images:"]
    for os_id, info in OPERATING_SYSTEMS.items():
        lines.append(f"  {os_id}:")
        for cloud in registry.names():
            lines.append(f"    {cloud}:")
            lines += [f"      {arch}: {json.dumps(info.image(cloud, arch))}"
                      for arch in osinfo.ARCHES if info.image(cloud, arch) is not None]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(_pinned_text())
