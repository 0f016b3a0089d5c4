"""The raw output (imagebuilder/clouds/raw/): a cell builds as qemu's, its disk becomes a raw disk,
its compressed form and sha256 files, catalogued apart from the qcow2s; `images list/resolve` and
`prune` work on them through the CLI. No build or VM: the disk is a small qcow2 made here."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from imagebuilder.artifact import Artifact
from imagebuilder.build import Job
from imagebuilder.cli import cli as imagebuilder_cli
from imagebuilder.config import PROJECT_ROOT, load_matrix
from imagebuilder.metadata import ImageMetadata
from imagebuilder.pipeline import TargetHooks
from imagebuilder.planner import Cell, plan
from imagebuilder.render import render_cells

MINOR = next(iter(yaml.safe_load((PROJECT_ROOT / "versions.lock.yaml").read_text())["minors"]))
DISK_BYTES = 3 * 1024**2


def write_matrix(path: Path, compression: str = "gz") -> Path:
    path.write_text(yaml.safe_dump({
        "versions_file": str(PROJECT_ROOT / "versions.lock.yaml"),
        "os": ["debian-12"], "kubernetes": [MINOR],
        "clouds": {"qemu": {"boot_test": False}, "raw": {"boot_test": False, "compression": compression}},
        "retention": {"keep_newest": 1, "min_age_days": 0, "deprecate_grace_days": 0},
    }))
    return path


def cells_of(matrix: Path) -> dict[str, Cell]:
    return {cell.id: cell for cell in plan(load_matrix(matrix))}


def built(cell: Cell, root: Path, timestamp: str, content: bytes) -> tuple[Job, Artifact]:
    """What the build leaves: the cell's directory with a qcow2 of `content` and the artifact record."""
    directory = root / cell.id / timestamp
    (directory / "output").mkdir(parents=True)
    source = directory / "disk.img"
    source.write_bytes(content)
    qcow2 = directory / "output" / f"debian-12-kube-{cell.kubernetes_version}-{timestamp}.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(source), str(qcow2)], check=True)
    metadata = ImageMetadata(os="debian-12", os_version="12", kubernetes_version=f"v{cell.kubernetes_version}",
                             kubernetes_minor=cell.kubernetes, arch=cell.arch, build_key=cell.build_key, cell=cell.id,
                             version="0.1.0", git_commit="0123456789abcdef", build_timestamp=timestamp)
    artifact = Artifact(cell_id=cell.id, cloud=cell.cloud, build_key=cell.build_key, image_name=qcow2.stem,
                        metadata=metadata, ids={"default": qcow2.stem}, files=[str(qcow2)],
                        versions={"kubernetes": cell.kubernetes_version})
    return Job(cell=cell, directory=directory, estimate=1.0), artifact


def disk_content(seed: int) -> bytes:
    """A few MiB with data and a hole, as a disk has."""
    data = bytearray(os.urandom(1024**2)) + bytearray(1024**2) + bytes([seed]) * 1024**2
    return bytes(data[:DISK_BYTES])


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    return {**os.environ, "IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue")}


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (a second each saved); `imagebuilder` as a command for the errors."""
    result = CliRunner().invoke(imagebuilder_cli, list(args), env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, "")


def cli_command(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_raw_cell_is_a_qemu_cell_with_another_output(tmp_path: Path) -> None:
    cells = cells_of(write_matrix(tmp_path / "matrix.yaml"))
    qemu, raw = cells[f"qemu-debian-12-k8s-{MINOR}"], cells[f"raw-debian-12-k8s-{MINOR}"]
    assert raw.base_image == qemu.base_image and raw.base_source == qemu.base_source
    assert raw.image_name == qemu.image_name and raw.build_key != qemu.build_key
    render_cells([qemu, raw], tmp_path / "out", None)
    rendered = (tmp_path / "out" / raw.id / "raw.pkr.hcl").read_text()
    # the same template, the same build, but for the variables that name the cell
    assert rendered == (tmp_path / "out" / qemu.id / "qemu.pkr.hcl").read_text()
    assert 'compression' not in (tmp_path / "out" / raw.id / "cell.auto.pkrvars.hcl").read_text()


@pytest.mark.parametrize("compression, opener", [("gz", gzip.open), ("xz", lzma.open)])
def test_the_raw_files_are_the_disk_compressed_with_sums(tmp_path: Path, env: dict[str, str], compression: str,
                                                          opener) -> None:
    raw_cell = cells_of(write_matrix(tmp_path / "matrix.yaml", compression))[f"raw-debian-12-k8s-{MINOR}"]
    content = disk_content(1)
    job, artifact = built(raw_cell, tmp_path / "build", "20260101000000", content)
    published = TargetHooks(publish=True).finish(job, artifact)

    names = sorted(Path(name).name for name in published.files)
    stem = f"debian-12-kube-{raw_cell.kubernetes_version}-20260101000000"
    assert names == sorted([f"{stem}.raw", f"{stem}.raw.{compression}", f"{stem}.raw.sha256sum",
                            f"{stem}.raw.{compression}.sha256sum"])
    (record,) = json.loads(cli(env, tmp_path, "images", "list", "--cloud", "raw", "--output", "json").stdout)
    folder = Path(record["files"][0]).parent
    assert folder.parent == tmp_path / "catalogue" / "images"
    assert (folder / f"{stem}.raw").read_bytes() == content
    with opener(folder / f"{stem}.raw.{compression}") as stream:
        assert stream.read() == content
    checked = subprocess.run(["sha256sum", "--check", "--strict", f"{stem}.raw.sha256sum",
                              f"{stem}.raw.{compression}.sha256sum"], cwd=folder, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert record["cloud"] == "raw" and raw_cell.id in record["metadata"].values()
    assert record["build_key"] == raw_cell.build_key and record["published"]
    assert sorted(Path(p).name for p in record["files"][1:]) == [n for n in names if n != f"{stem}.raw"]


def test_list_resolve_and_prune_keep_raw_disks_apart_from_qcow2s(tmp_path: Path, env: dict[str, str]) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml")
    cells = cells_of(matrix)
    qemu_cell, raw_cell = cells[f"qemu-debian-12-k8s-{MINOR}"], cells[f"raw-debian-12-k8s-{MINOR}"]
    hooks = TargetHooks(publish=True)
    job, artifact = built(qemu_cell, tmp_path / "build", "20260101000000", disk_content(0))
    hooks.finish(job, artifact)  # the qcow2, in the same catalogue
    for index, timestamp in enumerate(("20260102000000", "20260103000000")):
        # two raw builds of the cell (another build key each, as a changed input makes)
        cell = replace(raw_cell, build_key=f"{index}" * 64)
        job, artifact = built(cell, tmp_path / "build", timestamp, disk_content(index + 1))
        hooks.finish(job, artifact)

    def listed(cloud: str) -> list[dict]:
        result = cli(env, tmp_path, "images", "list", "-m", str(matrix), "--cloud", cloud, "--output", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    raws, qcow2s = listed("raw"), listed("qemu")
    assert [r["build_key"][0] for r in raws] == ["1", "0"]  # newest first
    assert [Path(r["files"][0]).suffix for r in raws] == [".raw", ".raw"]
    assert [(r["cloud"], Path(r["files"][0]).suffix) for r in qcow2s] == [("local", ".qcow2")]

    resolved = cli(env, tmp_path, "images", "resolve", "-m", str(matrix), "--cloud", "raw", "--os", "debian-12",
                   "--k8s", MINOR)
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout.strip() == raws[0]["image_id"]
    assert cli(env, tmp_path, "images", "resolve", "-m", str(matrix), "--cloud", "qemu", "--os", "debian-12",
               "--k8s", MINOR).stdout.strip() == qcow2s[0]["image_id"]

    dry = cli(env, tmp_path, "prune", "-m", str(matrix), "--cloud", "raw")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "dry run" in dry.stdout and len(listed("raw")) == 2
    for step in ("deprecated", "deleted"):
        applied = cli(env, tmp_path, "prune", "-m", str(matrix), "--cloud", "raw", "--apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert f"1 {step}" in applied.stdout, applied.stdout
    (kept,) = listed("raw")
    assert kept["image_id"] == raws[0]["image_id"]
    assert not Path(raws[1]["files"][0]).parent.exists()  # the older disk and its files are gone
    assert all(Path(p).is_file() for p in kept["files"][1:])
    assert [r["image_id"] for r in listed("qemu")] == [qcow2s[0]["image_id"]]  # the qcow2 was not raw's to prune


def test_a_raw_disk_missing_a_file_is_not_available(tmp_path: Path, env: dict[str, str]) -> None:
    raw_cell = cells_of(write_matrix(tmp_path / "matrix.yaml"))[f"raw-debian-12-k8s-{MINOR}"]
    job, artifact = built(raw_cell, tmp_path / "build", "20260101000000", disk_content(2))
    TargetHooks(publish=True).finish(job, artifact)
    (record,) = json.loads(cli(env, tmp_path, "images", "list", "--cloud", "raw", "--output", "json").stdout)
    gz = next(Path(p) for p in record["files"][1:] if p.endswith(".raw.gz"))
    gz.unlink()
    (record,) = json.loads(cli(env, tmp_path, "images", "list", "--cloud", "raw", "--output", "json").stdout)
    assert record["state"] == "missing"
    resolved = cli_command(env, tmp_path, "images", "resolve", "--cloud", "raw", "--os", "debian-12", "--k8s", MINOR)
    assert resolved.returncode == 2 and "no usable image" in resolved.stderr


@pytest.mark.parametrize("layout", ["hole-data-hole", "data-only", "hole-only", "data-hole-data"])
def test_a_sparse_disk_is_read_around_its_holes_and_hashed_whole(tmp_path: Path, layout: str) -> None:
    """The raw disk's holes are not read (disk._chunks): the sums and the compressed form are still
    those of every byte, zeros included, wherever the holes are."""
    from imagebuilder.clouds.raw.disk import CHUNK, raw_outputs

    disk = tmp_path / "disk.img"
    size = 3 * CHUNK + 25 * 512  # whole sectors, as a disk is
    with disk.open("wb") as out:
        out.truncate(size)
        parts = {"hole-data-hole": [(CHUNK + 7, b"x" * 70000)], "data-only": [(0, os.urandom(size))],
                 "hole-only": [], "data-hole-data": [(0, b"a" * 5000), (size - 3000, b"z" * 3000)]}[layout]
        for offset, data in parts:
            out.seek(offset)
            out.write(data)
    expected = disk.read_bytes()
    files = raw_outputs(disk, "gz", level=1)
    assert files.raw.read_bytes() == expected
    assert gzip.decompress(files.compressed.read_bytes()) == expected
    assert subprocess.run(["sha256sum", "--check", "--strict", *(path.name for path in files.sums)],
                          cwd=tmp_path, capture_output=True).returncode == 0
