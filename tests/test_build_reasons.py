"""Why a cell is built: the build key's inputs recorded on the image (one short digest each), compared
by `plan --changed` and `build` with the cell's inputs now. Against the local catalogue on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from services import qcow2_file

from imagebuilder.artifact import Artifact
from imagebuilder.clouds import store_for
from imagebuilder.config import load_matrix
from imagebuilder.metadata import GCP_LABEL_VALUE, ImageMetadata, metadata_for
from imagebuilder.planner import Cell, encode_inputs, key_inputs, key_material, moved_inputs, plan

REPO = Path(__file__).resolve().parents[1]


def write_matrix(root: Path, qemu: dict[str, Any], ansible_vars: dict[str, Any] | None = None,
                 **top: Any) -> Path:
    matrix = root / "matrix.yaml"
    overrides = [{"match": {"os": "debian-12"}, "ansible_vars": ansible_vars}] if ansible_vars else []
    matrix.write_text(yaml.safe_dump({"os": ["debian-12"], "kubernetes": ["1.35"], "clouds": {"qemu": qemu},
                                      "overrides": overrides, **top}))
    return matrix


def only_cell(matrix: Path) -> Cell:
    (cell,) = plan(load_matrix(matrix))
    return cell


def publish(cell: Cell, root: Path, age_days: int = 1) -> None:
    image = qcow2_file(root / "images" / f"{cell.build_key[:12]}.qcow2", "1M")
    stamp = (datetime.now(timezone.utc) - timedelta(days=age_days)).strftime("%Y%m%d%H%M%S")
    metadata = replace(metadata_for(cell, "0.1.0", "0123abc"), build_timestamp=stamp)
    store_for(cell.cloud, cell.settings).publish(Artifact(
        cell_id=cell.id, cloud=cell.cloud, build_key=cell.build_key, image_name=cell.id, metadata=metadata,
        ids={"default": str(image)}, files=[str(image)]))


def changed(matrix: Path, root: Path) -> dict[str, list[str]]:
    result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "plan", "-m", str(matrix), "--changed",
                             "--offline", "--format", "json"], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return {cell["id"]: cell["reasons"] for cell in json.loads(result.stdout)}


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    (tmp_path / "versions.lock.yaml").write_text((REPO / "versions.lock.yaml").read_text())
    return tmp_path


def test_plan_changed_says_what_moved_since_the_cells_newest_image(root: Path) -> None:
    matrix = write_matrix(root, {})
    cell = only_cell(matrix)
    assert changed(matrix, root) == {cell.id: ["new"]}

    publish(cell, root, age_days=3)
    assert changed(matrix, root) == {}

    write_matrix(root, {"disk_size_mb": 10240})
    assert changed(matrix, root) == {cell.id: ["settings"]}
    dry = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "build", "-m", str(matrix), "--dry-run",
                          "--offline", "--skip-preflight", "-o", str(root / "build")],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert [line.split() for line in dry.stdout.splitlines() if cell.id in line] == [["build", "(settings)", cell.id]]
    write_matrix(root, {"disk_size_mb": 10240}, ansible_vars={"extra": 1})
    assert changed(matrix, root) == {cell.id: ["settings", "ansible vars"]}
    write_matrix(root, {"max_parallel": 3, "rebuild_after_days": 5})  # when, not what: nothing moved
    assert changed(matrix, root) == {}

    write_matrix(root, {}, rebuild_after_days=2)  # its image is 3 days old
    assert changed(matrix, root) == {cell.id: ["age"]}


def test_inputs_are_one_short_value_on_every_cloud(root: Path) -> None:
    cell = only_cell(write_matrix(root, {}))
    material = key_material(cell, load_matrix(root / "matrix.yaml").versions.minors["1.35"].model_dump(mode="json"))
    assert key_inputs(material) == cell.inputs and list(cell.inputs) == list(material)
    metadata = metadata_for(cell, "0.1.0", "0123abc")
    value = metadata.to_tags()["imagebuilder-build-inputs"]
    assert value == encode_inputs(cell.inputs) and len(value) <= 63 and not GCP_LABEL_VALUE.search(value)
    assert metadata.to_gcp_labels()["imagebuilder-build-inputs"] == value
    assert len(metadata.to_tags()) + 2 <= 50  # AWS: 50 tags, with Name and the published tag
    assert ImageMetadata.from_tags(metadata.to_tags()) == metadata
    older = {key: v for key, v in metadata.to_tags().items() if key != "imagebuilder-build-inputs"}
    assert ImageMetadata.from_tags(older) is not None  # images made before it are still ours

    pins_moved = {**cell.inputs, "pins": "0000", "base_image": "ffff"}
    assert moved_inputs(encode_inputs(pins_moved), cell.inputs) == ("pins", "base image")
    assert moved_inputs(encode_inputs({**cell.inputs, "roles": "0", "templates": "1"}), cell.inputs) == (
        "roles/templates",)
    assert moved_inputs("", cell.inputs) == ("inputs not recorded on the image",)
