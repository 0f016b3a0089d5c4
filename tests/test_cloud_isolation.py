"""One declared cloud without credentials (or without its SDK) does not stop the others.

The matrix declares qemu (the local catalogue), OpenStack (a real Glance) and AWS with no
credentials anywhere. `images list`, `plan --changed`, `prune` and `build --dry-run` report
the local and Glance images, print one warning line for AWS and exit 3; `--strict`, or asking
for AWS by name, makes it the error (exit 2). Existence lookups list each store once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import openstack
import pytest
import yaml
from base_mirror import base_mirrors, publish_debian
from mirror import serve_directory
from services import (  # noqa: F401 - fixtures
    AWS_VARIABLES_TO_DROP,
    aws_env,
    glance_url,
    moto_url,
    openstack_env,
    qcow2_file,
    sample_metadata,
)

from imagebuilder import baseimages
from imagebuilder.artifact import Artifact
from imagebuilder.cloudscope import SKIPPED_EXIT, CloudScope
from imagebuilder.clouds import store_for
from imagebuilder.config import load_matrix
from imagebuilder.planner import Cell, plan

REPO = Path(__file__).resolve().parents[1]
MINORS = ["1.34", "1.35"]
WARNING = "imagebuilder: warning: aws skipped:"


def write_matrix(root: Path, clouds: dict[str, Any], mirrors: dict[str, str] | None = None) -> Path:
    (root / "versions.lock.yaml").write_text((REPO / "versions.lock.yaml").read_text())
    path = root / "matrix.yaml"
    path.write_text(yaml.safe_dump({"os": ["debian-12"], "kubernetes": MINORS, "clouds": clouds,
                                    **({"mirrors": mirrors} if mirrors else {})}))
    return path


def artifact_for(cell: Cell, tmp_path: Path) -> Artifact:
    image = qcow2_file(tmp_path / "images" / f"{cell.id}.qcow2", "1M")
    metadata = sample_metadata(kubernetes_version=f"v{cell.kubernetes_version}", kubernetes_minor=cell.kubernetes,
                               build_key=cell.build_key, cell=cell.id)
    return Artifact(cell_id=cell.id, cloud=cell.cloud, build_key=cell.build_key, image_name=cell.id,
                    metadata=metadata, ids={"default": str(image)}, files=[str(image)])


@pytest.fixture
def base_site(tmp_path: Path) -> Iterator[str]:
    """The Debian suites' InRelease files the qemu cells' base resolves to."""
    publish_debian(tmp_path / "site", "Sat, 01 Mar 2025 10:00:00 UTC")
    with serve_directory(tmp_path / "site") as url:
        yield url


@pytest.fixture
def world(tmp_path: Path, openstack_env: str, base_site: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The 1.35 cells of qemu and OpenStack are published; AWS has no credentials at all. The
    bases of qemu (a local Debian mirror) and OpenStack (a Glance image) resolve."""
    for name in AWS_VARIABLES_TO_DROP:
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    matrix = write_matrix(tmp_path, {"qemu": {}, "aws": {"regions": ["us-east-1"]}, "openstack": {}},
                          base_mirrors(base_site))
    disk = qcow2_file(tmp_path / "glance-base.qcow2", "1M")
    openstack.connect().image.create_image(name="debian-12", filename=str(disk), disk_format="qcow2",
                                           container_format="bare", wait=True)
    loaded = load_matrix(matrix)
    resolver = baseimages.Resolver(scope=CloudScope(warn=lambda line: None))
    cells = {cell.id: cell for cell in baseimages.resolve_cells(plan(loaded), loaded, resolver)}
    published = {}
    for cell_id in ("qemu-debian-12-k8s-1.35", "openstack-debian-12-k8s-1.35"):
        cell = cells[cell_id]
        published[cell_id] = store_for(cell.cloud, cell.settings).publish(artifact_for(cell, tmp_path))
    return {"matrix": matrix, "cells": cells, "published": published, "root": tmp_path}


def imagebuilder(*args: str, root: Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{prelude}\nimport sys\nfrom imagebuilder.cli import main\nsys.argv = ['imagebuilder', *{list(args)!r}]\nmain()"
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line]


def test_images_list_shows_the_other_clouds_with_one_warning(world: dict[str, Any]) -> None:
    result = imagebuilder("images", "list", "-m", str(world["matrix"]), "--output", "json", root=world["root"])

    assert result.returncode == SKIPPED_EXIT, result.stderr
    assert "Traceback" not in result.stderr
    [line] = warnings(result.stderr)
    assert line.startswith(WARNING) and "no AWS credentials" in line and "fix:" in line
    listed = {(image["cloud"], image["image_id"]) for image in json.loads(result.stdout)}
    assert ("local", world["published"]["qemu-debian-12-k8s-1.35"]["local"]) in listed
    assert ("openstack", world["published"]["openstack-debian-12-k8s-1.35"]["default"]) in listed


def test_plan_changed_lists_the_reachable_clouds_cells(world: dict[str, Any]) -> None:
    result = imagebuilder("plan", "-m", str(world["matrix"]), "--changed", "--format", "json", root=world["root"])

    assert result.returncode == SKIPPED_EXIT, result.stderr
    assert len(warnings(result.stderr)) == 1
    changed = [cell["id"] for cell in json.loads(result.stdout)]
    # the published 1.35 cells are not changed; nothing is said of AWS's cells
    assert changed == ["qemu-debian-12-k8s-1.34", "openstack-debian-12-k8s-1.34"]


def test_prune_reports_the_other_clouds(world: dict[str, Any]) -> None:
    result = imagebuilder("prune", "-m", str(world["matrix"]), "--output", "json", root=world["root"])

    # 1, not 3: this Glance has no Nova beside it, so its image's use cannot be checked (kept,
    # unchecked), and an unchecked image outranks a skipped cloud
    assert result.returncode == 1, result.stderr
    assert len(warnings(result.stderr)) == 1 and warnings(result.stderr)[0].startswith(WARNING)
    report = json.loads(result.stdout)
    assert {image["cloud"] for image in report["images"]} == {"local", "openstack"}
    assert report["errors"] == [] and report["summary"]["failed"] == 0
    assert report["summary"]["unchecked"] == 1


def test_build_dry_run_leaves_the_unreachable_clouds_cells_out(world: dict[str, Any]) -> None:
    result = imagebuilder("build", "-m", str(world["matrix"]), "--dry-run", "--skip-preflight",
                          "-o", str(world["root"] / "build"), root=world["root"])

    assert result.returncode == SKIPPED_EXIT, result.stderr
    lines = {line.split()[-1]: line.rsplit(None, 1)[0].strip() for line in result.stdout.splitlines()
             if "-k8s-" in line}
    assert lines["aws-debian-12-k8s-1.35"] == "skip (cloud unreachable)"
    assert lines["qemu-debian-12-k8s-1.34"] == "build (new)"
    assert lines["openstack-debian-12-k8s-1.35"].startswith("skip (exists:")


def test_publish_selects_as_build_does_and_reports_the_other_clouds(world: dict[str, Any]) -> None:
    result = imagebuilder("publish", "-m", str(world["matrix"]), root=world["root"])

    assert result.returncode == SKIPPED_EXIT, result.stderr
    assert "Traceback" not in result.stderr
    [line] = warnings(result.stderr)
    assert line.startswith(WARNING) and "no AWS credentials" in line
    # the published cells are in place; the unbuilt are named; nothing is said of AWS's cells
    assert result.stdout == ""
    assert "2 cells have no image yet" in result.stderr and "aws-" not in result.stderr.replace(line, "")
    named = imagebuilder("publish", "-m", str(world["matrix"]), "--only", "aws-*", root=world["root"])
    assert named.returncode == 2 and named.stderr.startswith("imagebuilder: aws") and "Traceback" not in named.stderr


@pytest.mark.parametrize("args", [("images", "list", "--strict"), ("images", "list", "--cloud", "aws"),
                                  ("plan", "--changed", "--strict"), ("prune", "--cloud", "aws")],
                         ids=lambda a: " ".join(a))
def test_strict_or_naming_the_cloud_makes_it_the_error(world: dict[str, Any], args: tuple[str, ...]) -> None:
    result = imagebuilder(*args, "-m", str(world["matrix"]), root=world["root"])

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("imagebuilder: aws") and "no AWS credentials" in line


def test_a_missing_sdk_is_one_warning_naming_the_extra(world: dict[str, Any]) -> None:
    no_boto3 = "import sys\nsys.modules['boto3'] = None  # as if the aws extra were not installed"
    result = imagebuilder("images", "list", "-m", str(world["matrix"]), "--output", "json", root=world["root"],
                          prelude=no_boto3)

    assert result.returncode == SKIPPED_EXIT, result.stderr
    [line] = warnings(result.stderr)
    assert line.startswith(WARNING) and "pip install 'imagebuilder[aws]'" in line
    assert {image["cloud"] for image in json.loads(result.stdout)} == {"local", "openstack"}


def test_existence_lookups_list_each_region_once(aws_env: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.client

    from imagebuilder.pipeline import CatalogueLookup, changed_cells

    matrix = tmp_path / "matrix.yaml"
    (tmp_path / "versions.lock.yaml").write_text((REPO / "versions.lock.yaml").read_text())
    matrix.write_text(yaml.safe_dump({
        "os": ["ubuntu-2204", "ubuntu-2404", "debian-12", "rockylinux-9"], "kubernetes": ["1.33", "1.34", "1.35"],
        "clouds": {"aws": {"regions": ["us-east-1", "eu-west-1"]}},
        "overrides": [{"match": {"os": "ubuntu-2404"}, "settings": {"instance_type": "m6i.large"}}]}))
    cells = plan(load_matrix(matrix))
    calls: list[str] = []
    real_call = botocore.client.BaseClient._make_api_call

    def counting(self: Any, operation: str, params: dict[str, Any]) -> Any:
        calls.append(operation)
        return real_call(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counting)
    changed = changed_cells(cells, CatalogueLookup())

    assert len(cells) == 12 and changed == cells
    assert calls.count("DescribeImages") == 2, calls  # one listing per region, whatever the cell count


def test_rebuild_after_days_makes_an_old_image_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagebuilder.pipeline import CatalogueLookup, changed_cells

    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    (tmp_path / "versions.lock.yaml").write_text((REPO / "versions.lock.yaml").read_text())
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump({"os": ["debian-12"], "kubernetes": MINORS, "clouds": {"qemu": {}},
                                      "rebuild_after_days": 30}))
    loaded = load_matrix(matrix)
    assert loaded.matrix.rebuild_after_days == 30
    old, fresh = plan(loaded)
    for cell, age_days in ((old, 45), (fresh, 2)):
        artifact = artifact_for(cell, tmp_path)
        stamp = (datetime.now(timezone.utc) - timedelta(days=age_days)).strftime("%Y%m%d%H%M%S")
        artifact = replace(artifact, metadata=replace(artifact.metadata, build_timestamp=stamp))
        store_for(cell.cloud, cell.settings).publish(artifact)

    assert changed_cells([old, fresh], CatalogueLookup()) == []  # off: both keys exist
    assert changed_cells([old, fresh], CatalogueLookup(rebuild_after_days=30)) == [old]
    result = imagebuilder("plan", "-m", str(matrix), "--changed", "--format", "json", "--offline", root=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [cell["id"] for cell in json.loads(result.stdout)] == [old.id]


def test_rebuild_after_days_of_a_cloud_overrides_the_matrix_and_stays_out_of_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagebuilder.pipeline import CatalogueLookup, changed_cells

    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    (tmp_path / "versions.lock.yaml").write_text((REPO / "versions.lock.yaml").read_text())
    matrix = tmp_path / "matrix.yaml"

    def cells_with(top: int | None, qemu: int | None) -> list[Any]:
        matrix.write_text(yaml.safe_dump({"os": ["debian-12"], "kubernetes": MINORS,
                                          "clouds": {"qemu": {} if qemu is None else {"rebuild_after_days": qemu}},
                                          **({} if top is None else {"rebuild_after_days": top})}))
        return plan(load_matrix(matrix))

    old, fresh = cells_with(None, None)
    for cell, age_days in ((old, 45), (fresh, 2)):
        artifact = artifact_for(cell, tmp_path)
        stamp = (datetime.now(timezone.utc) - timedelta(days=age_days)).strftime("%Y%m%d%H%M%S")
        store_for(cell.cloud, cell.settings).publish(
            replace(artifact, metadata=replace(artifact.metadata, build_timestamp=stamp)))

    for top, qemu, changed in ((None, None, []), (30, None, [old.id]), (30, 60, []), (None, 40, [old.id]),
                               (90, 1, [old.id, fresh.id])):
        cells = cells_with(top, qemu)
        assert [c.build_key for c in cells] == [old.build_key, fresh.build_key]  # when, not what: same keys
        lookup = CatalogueLookup(rebuild_after_days=load_matrix(matrix).matrix.rebuild_after_days)
        assert [c.id for c in changed_cells(cells, lookup)] == changed, (top, qemu)
    result = imagebuilder("plan", "-m", str(matrix), "--changed", "--format", "json", "--offline", root=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [cell["id"] for cell in json.loads(result.stdout)] == [old.id, fresh.id]
