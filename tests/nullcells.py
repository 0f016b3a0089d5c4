"""Cells whose Packer build is a real `packer build` of the null builder running shell-local steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from imagebuilder import hcl
from imagebuilder.build import Job, make_jobs
from imagebuilder.config import load_matrix
from imagebuilder.planner import Cell, plan
from imagebuilder.render import cell_metadata

DATA = Path(__file__).parent / "data"

TEMPLATE = """source "null" "node" {{
  communicator = "none"
}}

build {{
  sources = ["source.null.node"]

  provisioner "shell-local" {{
    inline = [{script}]
  }}

  post-processor "manifest" {{
    output     = "packer-manifest.json"
    strip_path = true
    custom_data = {{
      metadata   = {metadata}
      versions   = {versions}
      image_name = {name}
    }}
  }}
}}
"""


def null_cells(tmp_path: Path, clouds: dict[str, dict], minors: list[str] | None = None,
               oses: list[str] | None = None) -> list[Cell]:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    matrix = {"os": oses or ["debian-12", "ubuntu-2204"], "kubernetes": minors or ["1.30", "1.31", "1.32"],
              "clouds": clouds}
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(matrix))
    return plan(load_matrix(tmp_path / "matrix.yaml"))


def write_null_build(cell: Cell, directory: Path, script: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    metadata = json.dumps(cell_metadata(cell).to_tags(), sort_keys=True)
    text = TEMPLATE.format(script=", ".join(hcl.string(line) for line in script),
                           metadata=hcl.string(metadata), versions=hcl.string(json.dumps(cell.versions)),
                           name=hcl.string(cell.image_name.replace("{timestamp}", "0")))
    (directory / "null.pkr.hcl").write_text(text)
    return directory


def null_jobs(cells: list[Cell], root: Path, script_for) -> list[Job]:
    directories = [write_null_build(cell, root / cell.id, script_for(cell)) for cell in cells]
    return make_jobs(cells, directories)
