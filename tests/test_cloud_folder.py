"""A cloud is one folder: a test cloud added from a folder alone plans, renders, builds, lists and
prunes, and the architecture stays acyclic.

The test cloud ("nullcloud") lives in a temporary directory named by IMAGEBUILDER_CLOUD_PATH:
nothing in the checkout changes (git status is compared before and after). It renders Packer's
`null` builder (built into Packer, no VM) and keeps its records in a directory of its settings.
"""

from __future__ import annotations

import ast
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

CLOUD = "nullcloud"
INIT = '''"""A test cloud: Packer's null builder, records in a local directory."""

from __future__ import annotations

from typing import Any

from imagebuilder.clouds.nullcloud.settings import NullSettings
from imagebuilder.clouds.registry import Cloud


class NullCloud(Cloud):
    name = "nullcloud"
    settings = NullSettings
    order = 50
    builder = "null"
    store_path = "imagebuilder.clouds.nullcloud.store:NullStore"
    estimate_s = 5.0

    def base_image(self, reference: Any, os_info: Any, arch: str) -> dict[str, Any]:
        return {"image": f"{os_info.id}-{arch}"}  # its own catalogue of bases, not the OS table's

    def image_name(self, os_id: str, kubernetes_version: str, arch: str) -> str:
        return f"null-{os_id}-{kubernetes_version}-{{timestamp}}"

    def packer_variables(self, cell: Any, context: Any) -> dict[str, Any]:
        return {"null_flavour": cell.settings["flavour"]}


CLOUD = NullCloud()
'''
SETTINGS = '''"""clouds.nullcloud."""

from __future__ import annotations

from pydantic import Field

from imagebuilder.models import CloudSettings


class NullSettings(CloudSettings):
    max_parallel: int = Field(2, ge=1)
    records_dir: str
    flavour: str = "plain"  # shapes the image: in the build key

    OUTSIDE_BUILD_KEY = frozenset({"max_parallel", "records_dir"})
'''
STORE = '''"""The test cloud's images: the local catalogue's records, in its own directory."""

from __future__ import annotations

from imagebuilder.artifact import Artifact
from imagebuilder.clouds.local import LocalCatalogue, local_image_id
from imagebuilder.clouds.nullcloud.settings import NullSettings


class NullStore(LocalCatalogue):
    cloud = "nullcloud"

    def __init__(self, settings: NullSettings) -> None:
        super().__init__(settings.records_dir)

    def publish(self, artifact: Artifact) -> dict[str, str]:
        image_id = local_image_id(artifact.build_key)
        image = self.root / "incoming" / f"{image_id}.raw"  # what a real builder would have made
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_text(artifact.build_key + "\\n")
        artifact = Artifact(**{**artifact.__dict__, "files": [str(image)]})
        return super().publish(artifact)
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
    inline = ["echo ${var.null_flavour} > ${path.root}/flavour.txt"]
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


def make_cloud_folder(root: Path) -> Path:
    folder = root / "clouds" / CLOUD
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(INIT)
    (folder / "settings.py").write_text(SETTINGS)
    (folder / "store.py").write_text(STORE)
    (folder / f"{CLOUD}.pkr.hcl.j2").write_text(TEMPLATE)
    return folder.parent


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=True).stdout


def test_a_cloud_from_a_folder_plans_renders_builds_lists_and_prunes(tmp_path: Path) -> None:
    before = git_status()
    cloud_path = make_cloud_folder(tmp_path)
    records = tmp_path / "records"
    minor = next(iter(yaml.safe_load((PROJECT_ROOT / "versions.lock.yaml").read_text())["minors"]))
    matrix = tmp_path / "matrix.yaml"

    def declare(flavour: str) -> None:
        matrix.write_text(yaml.safe_dump({
            "versions_file": str(PROJECT_ROOT / "versions.lock.yaml"),
            "os": ["debian-12"], "kubernetes": [minor],
            "clouds": {CLOUD: {"records_dir": str(records), "flavour": flavour}},
            "retention": {"keep_newest": 1, "min_age_days": 0, "deprecate_grace_days": 0},
        }))

    env = {**os.environ, "IMAGEBUILDER_CLOUD_PATH": str(cloud_path),
           "IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "imagebuilder.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    declare("plain")
    planned = cli("plan", "-m", str(matrix), "--offline", "--format", "json")
    assert planned.returncode == 0, planned.stderr
    (cell,) = json.loads(planned.stdout)
    assert cell["id"] == f"{CLOUD}-debian-12-k8s-{minor}" and cell["cloud"] == CLOUD
    assert cell["image_name"].startswith("null-debian-12-")

    rendered = cli("render", "-m", str(matrix), "--offline", "-o", str(tmp_path / "out"))
    assert rendered.returncode == 0, rendered.stderr
    cell_dir = tmp_path / "out" / cell["id"]
    assert (cell_dir / f"{CLOUD}.pkr.hcl").is_file()
    assert 'null_flavour = "plain"' in (cell_dir / "cell.auto.pkrvars.hcl").read_text()
    validated = subprocess.run(["packer", "validate", "."], cwd=cell_dir, capture_output=True, text=True, timeout=120)
    assert validated.returncode == 0, validated.stdout + validated.stderr

    built = cli("build", "-m", str(matrix), "--offline", "--skip-preflight", "-o", str(tmp_path / "out"))
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert (cell_dir / "flavour.txt").read_text().strip() == "plain"  # Packer ran the cloud's build

    listed = cli("images", "list", "-m", str(matrix), "--cloud", CLOUD, "--output", "json")
    assert listed.returncode == 0, listed.stderr
    (first,) = json.loads(listed.stdout)
    assert first["cloud"] == CLOUD and first["build_key"] == cell["build_key"] and first["published"]

    again = cli("build", "-m", str(matrix), "--offline", "--skip-preflight", "-o", str(tmp_path / "out"))
    assert again.returncode == 0, again.stderr
    assert len(json.loads(cli("images", "list", "-m", str(matrix), "--cloud", CLOUD, "--output", "json").stdout)) == 1

    declare("spicy")  # a setting in the build key: a new image, the first one superseded
    newer = cli("build", "-m", str(matrix), "--offline", "--skip-preflight", "-o", str(tmp_path / "out"))
    assert newer.returncode == 0, newer.stderr
    images = json.loads(cli("images", "list", "-m", str(matrix), "--cloud", CLOUD, "--output", "json").stdout)
    assert len(images) == 2

    dry = cli("prune", "-m", str(matrix), "--cloud", CLOUD)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert len(json.loads(cli("images", "list", "-m", str(matrix), "--cloud", CLOUD, "--output", "json").stdout)) == 2
    assert "deprecate" in dry.stdout and "dry run" in dry.stdout
    for step in ("deprecated", "deleted"):  # deprecated first, deleted once the grace (0 days) has passed
        applied = cli("prune", "-m", str(matrix), "--cloud", CLOUD, "--apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert f"1 {step}" in applied.stdout, applied.stdout
    (kept,) = json.loads(cli("images", "list", "-m", str(matrix), "--cloud", CLOUD, "--output", "json").stdout)
    assert kept["build_key"] != first["build_key"]  # the older, superseded image was pruned

    assert git_status() == before  # nothing in the checkout was touched


def test_a_folder_without_a_cloud_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "clouds" / "brokencloud"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('"""No CLOUD here."""\n')
    result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "plan", "-m", str(PROJECT_ROOT / "matrix.yaml"),
                             "--offline"], env={**os.environ, "IMAGEBUILDER_CLOUD_PATH": str(tmp_path / "clouds")},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "defines no CLOUD" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _import_graph() -> dict[str, set[str]]:
    """Module -> the imagebuilder modules it imports (at any level; `if TYPE_CHECKING:` excluded)."""
    package = PROJECT_ROOT / "imagebuilder"
    modules: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
                     for statement in block.body for node in ast.walk(statement)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(t for alias in node.names if (t := resolve(alias.name)))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(t for alias in node.names
                               if (t := resolve(f"{node.module}.{alias.name}") or resolve(node.module)))
        graph[module] = targets - {module}
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _import_graph()
    assert "imagebuilder.clouds.registry" in graph and graph["imagebuilder.retention"]  # the scan found the code
    pairs = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph.get(b, ())})
    assert pairs == []


def test_nothing_outside_a_cloud_folder_imports_it_except_through_the_registry() -> None:
    graph = _import_graph()
    builtin = [path.name for path in (PROJECT_ROOT / "imagebuilder" / "clouds").iterdir()
               if (path / "__init__.py").is_file()]
    assert {"aws", "gcp", "openstack", "azure", "qemu"} <= set(builtin)
    offenders = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                       for name in builtin
                       if target.startswith(f"imagebuilder.clouds.{name}")
                       and not module.startswith(f"imagebuilder.clouds.{name}")
                       # Cloud folders may import each other: the local outputs (raw, ova) build on
                       # the qemu one (its cells, template and settings) and only change the output.
                       and not any(module.startswith(f"imagebuilder.clouds.{other}.") or
                                   module == f"imagebuilder.clouds.{other}" for other in builtin)
                       and module != "imagebuilder.local_target")  # the qemu target's machinery
    assert offenders == []
