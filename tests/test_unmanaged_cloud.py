"""A cloud whose images imagebuilder does not manage yet (`store_path = None`): built every run,
never published, and `images`/`prune` say so in one line and go on with the other clouds.

The test cloud ("nullfree") lives in a temporary directory named by IMAGEBUILDER_CLOUD_PATH, as
tests/test_cloud_folder.py's does: Packer's `null` builder with a shell-local step that appends a
line per run, so each real Packer run is counted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imagebuilder.config import PROJECT_ROOT

pytestmark = pytest.mark.skipif(shutil.which("packer") is None, reason="needs packer")

CLOUD = "nullfree"
WHERE = "the build's output directory"
INIT = f'''"""A test cloud whose images are not managed: Packer's null builder, no store."""

from __future__ import annotations

from typing import Any

from imagebuilder.clouds.registry import Cloud
from imagebuilder.models import CloudSettings


class NullFreeSettings(CloudSettings):
    pass


class NullFree(Cloud):
    name = "{CLOUD}"
    settings = NullFreeSettings
    order = 50
    builder = "null"
    store_path = None
    image_location = "{WHERE}"
    estimate_s = 5.0

    def base_image(self, reference: Any, os_info: Any, arch: str) -> dict[str, Any]:
        return {{"image": os_info.id}}


CLOUD = NullFree()
'''
TEMPLATE = '''source "null" "node" {
  communicator = "none"
}

locals {
  timestamp  = formatdate("YYYYMMDDhhmmss", timestamp())
  image_name = "${var.image_name_prefix}${local.timestamp}"
  metadata   = merge(var.metadata, { "imagebuilder-build-timestamp" = local.timestamp })
}

build {
  sources = ["source.{{ builder }}.node"]

  provisioner "shell-local" {
    inline = ["echo built >> ${path.root}/runs.txt"]
  }

  post-processor "manifest" {
    output     = "${path.root}/packer-manifest.json"
    strip_path = false
    custom_data = {
      metadata   = jsonencode(local.metadata)
      versions   = jsonencode(var.versions)
      image_name = local.image_name
    }
  }
}
'''
NOTICE = f"imagebuilder: {CLOUD}: images are not managed yet (Packer leaves them in {WHERE}); list and prune skip it"


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "clouds" / CLOUD
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(INIT)
    (folder / f"{CLOUD}.pkr.hcl.j2").write_text(TEMPLATE)
    minor = next(iter(yaml.safe_load((PROJECT_ROOT / "versions.lock.yaml").read_text())["minors"]))
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump({
        "versions_file": str(PROJECT_ROOT / "versions.lock.yaml"),
        "os": ["debian-12"], "kubernetes": [minor], "clouds": {CLOUD: {}, "qemu": {}},
    }))
    env = {**os.environ, "IMAGEBUILDER_CLOUD_PATH": str(tmp_path / "clouds"),
           "IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return matrix, env


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_an_unmanaged_cloud_is_built_every_run_and_never_published(setup: tuple[Path, dict[str, str]]) -> None:
    matrix, env = setup
    out = matrix.parent / "out"
    selector = f"{CLOUD}-*"
    for run in (1, 2):
        built = cli(env, matrix.parent, "build", "-m", str(matrix), "--only", selector, "--offline",
                    "--skip-preflight", "-o", str(out))
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
        (cell_dir,) = [path for path in out.iterdir() if path.name.startswith(CLOUD)]
        assert (cell_dir / "runs.txt").read_text().count("built") == run  # Packer ran again: no skip lookup
        assert "images not managed: built every run" in built.stdout
        lines = [line for line in built.stdout.splitlines() if line.startswith("not published:")]
        assert lines == [f"not published: {CLOUD}: images are not managed yet (Packer leaves them in {WHERE})"]
    assert not (matrix.parent / "catalogue").exists() or not any((matrix.parent / "catalogue").rglob("*.json"))

    dry = cli(env, matrix.parent, "build", "-m", str(matrix), "--only", selector, "--offline", "--dry-run",
              "-o", str(out))
    assert dry.returncode == 0, dry.stderr
    assert "build (images not managed: built every run)" in dry.stdout

    published = cli(env, matrix.parent, "publish", "-m", str(matrix), "--only", selector, "--offline")
    assert published.returncode == 0, published.stderr
    assert published.stderr.splitlines()[-1:] == [
        f"imagebuilder: {CLOUD}: images are not managed yet (Packer leaves them in {WHERE}); publish skips it"]


def test_list_and_prune_say_it_in_one_line_and_go_on(setup: tuple[Path, dict[str, str]]) -> None:
    matrix, env = setup
    listed = cli(env, matrix.parent, "images", "list", "-m", str(matrix), "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.splitlines() == [NOTICE]
    assert json.loads(listed.stdout) == []  # the local catalogue (qemu's) was listed: empty
    pruned = cli(env, matrix.parent, "prune", "-m", str(matrix), "--output", "json")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stderr.splitlines() == [NOTICE]
    assert json.loads(pruned.stdout)["images"] == []

    for verb in (("images", "list"), ("prune",), ("images", "resolve", "--os", "debian-12", "--k8s", "1.31")):
        named = cli(env, matrix.parent, *verb, "-m", str(matrix), "--cloud", CLOUD)
        assert named.returncode == 2, named.stdout + named.stderr
        (line,) = named.stderr.splitlines()
        assert line.startswith(f"imagebuilder: {CLOUD}: images are not managed yet (Packer leaves them in {WHERE})")
        assert "| fix:" in line and "Traceback" not in named.stderr


def test_the_registry_leaves_it_out_of_the_stores(setup: tuple[Path, dict[str, str]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from imagebuilder import preflight
    from imagebuilder.clouds import registry
    from imagebuilder.planner import plan
    from imagebuilder.config import load_matrix

    matrix, env = setup
    monkeypatch.setenv("IMAGEBUILDER_CLOUD_PATH", env["IMAGEBUILDER_CLOUD_PATH"])
    assert CLOUD in registry.clouds() and not registry.get(CLOUD).managed
    assert CLOUD not in registry.stores() and CLOUD in registry.unmanaged()
    assert CLOUD not in registry.aliases() and "qemu" in registry.aliases()
    assert set(registry.unmanaged()).isdisjoint(registry.stores()) and "local" in registry.stores()
    cells = plan(load_matrix(matrix))
    assert {cell.cloud for cell in cells} == {CLOUD, "qemu"}
    assert {cloud for cloud, _ in preflight.cloud_checks(cells)} == {"qemu"}  # no store to ask credentials of
