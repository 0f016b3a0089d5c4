"""Nightly no-op: 150 cells whose images are all in the catalogue already.

Runs the real `imagebuilder build` (plan, render, look every build key up, schedule) against a
local catalogue holding all 150 images, and prints its wall time (target: under 2 s). Packer
must run for none of them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix1000 import MINORS, write_matrix  # noqa: E402

from imagebuilder.artifact import Artifact  # noqa: E402
from imagebuilder.clouds.local import LocalCatalogue  # noqa: E402
from imagebuilder.config import load_matrix  # noqa: E402
from imagebuilder.planner import plan  # noqa: E402
from imagebuilder.render import cell_metadata  # noqa: E402


def qemu_only(matrix_path: Path) -> None:
    matrix = yaml.safe_load(matrix_path.read_text())
    matrix["clouds"] = {"qemu": {}}
    matrix["kubernetes"] = MINORS[:30]
    # Five OSes x 30 minors; flatcar baked too, so that all 150 cells are image builds.
    matrix["overrides"] = [{"match": {"os": "flatcar"}, "strategy": "bake"}]
    matrix_path.write_text(yaml.safe_dump(matrix))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        matrix_path = write_matrix(root)
        qemu_only(matrix_path)
        cells = plan(load_matrix(matrix_path))
        catalogue = LocalCatalogue(root / "catalogue")
        image = root / "disk.qcow2"
        image.write_bytes(b"not a real image")
        for cell in cells:
            catalogue.publish(Artifact(cell_id=cell.id, cloud="qemu", build_key=cell.build_key, image_name=cell.id,
                                       metadata=cell_metadata(cell), ids={}, files=[str(image)]))
        env = {**os.environ, "IMAGEBUILDER_CATALOGUE": str(root / "catalogue"), "CI": "true"}
        command = [sys.executable, "-m", "imagebuilder.cli", "build", "-m", str(matrix_path), "-o", str(root / "build")]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - start
        logs = list((root / "build").glob("*/build.log"))
    if result.returncode != 0:
        sys.exit(f"build failed: {result.stderr[-2000:]}")
    counts = re.search(r"(\d+) cells skipped", result.stdout)
    skipped = int(counts.group(1)) if counts else 0
    print(f"nightly no-op: {len(cells)} cells, {skipped} skipped, {len(logs)} Packer runs, "
          f"{elapsed:.2f} s wall for the whole command (target < 2 s)")


if __name__ == "__main__":
    main()
