"""image-builder's make target names: `imagebuilder targets`, `--only <target>` (what `make
build-<target>` passes) and image-builder's provider names as aliases under `clouds:`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from imagebuilder.cli import cli
from imagebuilder.config import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "examples" / "image-builder.yaml"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout


def planned_ids(matrix: Path, *only: str) -> list[str]:
    code, out = run("plan", "-m", str(matrix), "--offline", "--format", "json", *[a for o in only for a in ("--only", o)])
    assert code == 0, out
    return [cell["id"] for cell in json.loads(out)]


def test_the_example_lists_image_builder_targets_with_their_cells() -> None:
    code, out = run("targets", "-m", str(EXAMPLE), "--format", "json")
    assert code == 0, out
    found = {entry["target"]: entry["cells"] for entry in json.loads(out)}
    minor = yaml.safe_load(EXAMPLE.read_text())["kubernetes"][0]
    for target, cell in (("build-raw-debian-12", "raw-debian-12"), ("build-raw-ubuntu-2404", "raw-ubuntu-2404"),
                         ("build-qemu-debian-12", "qemu-debian-12"), ("build-ami-ubuntu-2404", "aws-ubuntu-2404"),
                         ("build-gce-ubuntu-2204", "gcp-ubuntu-2204"), ("build-openstack-flatcar", "openstack-flatcar"),
                         ("build-azure-sig-ubuntu-2204-gen2", "azure-ubuntu-2204"),
                         ("build-azure-sig-ubuntu-2204", "azure-ubuntu-2204-gen1"),
                         ("build-azure-sig-ubuntu-2404-cvm", "azure-ubuntu-2404-cvm")):
        assert found[target] == [f"{cell}-k8s-{minor}"], target
    assert found["build-raw-flatcar"] == [f"raw-flatcar-k8s-{minor}"]  # baked from Flatcar's qemu disk
    assert "build-vultr-flatcar" not in found  # excluded: no Flatcar image there
    every = sorted(cell for cells in found.values() for cell in cells)
    assert sorted(set(every)) == sorted(planned_ids(EXAMPLE))  # each cell under a target
    # A cell is under its own name and, for a qemu or kubevirt cell from the vendor's cloud image
    # (image-builder's -cloudimg builds), under that name too; no other cell is listed twice.
    twice = sorted(cell for cell in set(every) if every.count(cell) > 1)
    assert twice and all(cell.startswith(("qemu-", "kubevirt-")) for cell in twice)
    for cloudimg, plain in (("build-qemu-ubuntu-2404-cloudimg", "build-qemu-ubuntu-2404"),
                            ("build-qemu-rockylinux-9-cloudimg", "build-qemu-rockylinux-9"),
                            ("build-kubevirt-qemu-ubuntu-2204-cloudimg", "build-kubevirt-qemu-ubuntu-2204")):
        assert found[cloudimg] == found[plain], cloudimg
    assert "build-qemu-debian-12-cloudimg" not in found  # Debian's base is built here, not a cloud image
    assert not [name for name in found if name.startswith(("build-raw-", "build-node-ova-")) and "cloudimg" in name]
    code, table = run("targets", "-m", str(EXAMPLE), "--format", "table")
    assert code == 0 and "build-raw-debian-12" in table and f"raw-debian-12-k8s-{minor}" in table


def test_only_selects_a_target_as_make_passes_it_and_cell_ids_as_before() -> None:
    minor = yaml.safe_load(EXAMPLE.read_text())["kubernetes"][0]
    # the Makefile's build-%: --only '$*-k8s-$(K8S)'
    assert planned_ids(EXAMPLE, "ami-ubuntu-2404-k8s-*") == [f"aws-ubuntu-2404-k8s-{minor}"]
    assert planned_ids(EXAMPLE, f"azure-sig-ubuntu-2204-gen2-k8s-{minor}") == [f"azure-ubuntu-2204-k8s-{minor}"]
    assert planned_ids(EXAMPLE, "build-gce-debian-12") == [f"gcp-debian-12-k8s-{minor}"]
    assert planned_ids(EXAMPLE, "raw-debian-12-k8s-*") == [f"raw-debian-12-k8s-{minor}"]
    assert planned_ids(EXAMPLE, "qemu-debian-12-k8s-*") == [f"qemu-debian-12-k8s-{minor}"]
    assert planned_ids(EXAMPLE, f"qemu-ubuntu-2404-cloudimg-k8s-{minor}") == [f"qemu-ubuntu-2404-k8s-{minor}"]
    assert planned_ids(EXAMPLE, "build-kubevirt-qemu-rockylinux-9-cloudimg") == [f"kubevirt-rockylinux-9-k8s-{minor}"]
    code, out = run("plan", "-m", str(EXAMPLE), "--offline", "--only", "ami-ubuntu-2404-k8s-1.01")
    assert out.strip() in ("", "[]") or code != 0  # another minor: nothing


def test_make_build_passes_the_target_to_only() -> None:
    dry = subprocess.run(["make", "-n", "build-ami-ubuntu-2404", f"MATRIX={EXAMPLE}"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert "build -m" in dry.stdout and "--only 'ami-ubuntu-2404-k8s-*'" in dry.stdout


def test_image_builder_provider_names_are_aliases_in_the_matrix(tmp_path: Path) -> None:
    versions = str(PROJECT_ROOT / "versions.lock.yaml")
    minor = next(iter(yaml.safe_load((PROJECT_ROOT / "versions.lock.yaml").read_text())["minors"]))
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump({"versions_file": versions, "os": ["ubuntu-2404"], "kubernetes": [minor],
                                      "clouds": {"ami": {"regions": ["us-east-1"]}, "raw": None}}))
    assert sorted(planned_ids(matrix)) == [f"aws-ubuntu-2404-k8s-{minor}", f"raw-ubuntu-2404-k8s-{minor}"]
    matrix.write_text(yaml.safe_dump({"versions_file": versions, "os": ["ubuntu-2404"], "kubernetes": [minor],
                                      "clouds": {"ami": {"regions": ["us-east-1"]}, "aws": {"regions": ["eu-west-1"]}}}))
    both = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "plan", "-m", str(matrix), "--offline"],
                          capture_output=True, text=True, timeout=60, env=os.environ)
    assert both.returncode == 2 and "Traceback" not in both.stderr
    assert both.stderr.strip().count("\n") == 0 and "declared twice" in both.stderr, both.stderr
