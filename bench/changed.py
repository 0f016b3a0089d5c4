"""Change one pinned version; print builds run divided by cells affected (target: exactly 1.0).

Every cell of the generated 1,000-cell matrix is first "built" (its key put in a catalogue);
then one minor's containerd is moved to another version with other sums. The cells the build
would run are those `plan --changed` selects; the cells affected are those on that minor.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix1000 import MINORS, write_matrix  # noqa: E402

from imagebuilder.config import load_matrix  # noqa: E402
from imagebuilder.pipeline import changed_cells  # noqa: E402
from imagebuilder.planner import plan  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        matrix_path = write_matrix(Path(tmp))
        catalogue = {cell.build_key for cell in plan(load_matrix(matrix_path))}
        lock_path = Path(tmp) / "versions.lock.yaml"
        lock = yaml.safe_load(lock_path.read_text())
        target = MINORS[7]
        containerd = lock["minors"][target]["components"]["containerd"]
        containerd["version"] = "9.9.9"
        containerd["files"]["containerd"]["path"] = "v9.9.9/containerd-9.9.9-linux-{arch}.tar.gz"
        containerd["files"]["containerd"]["sha256"] = {"amd64": "a" * 64, "arm64": "b" * 64}
        lock_path.write_text(yaml.safe_dump(lock))
        start = time.perf_counter()
        cells = plan(load_matrix(matrix_path))
        to_build = changed_cells(cells, lambda cell: "exists" if cell.build_key in catalogue else None)
        elapsed = time.perf_counter() - start
        affected = [cell for cell in cells if cell.kubernetes == target]
    print(f"changed containerd of Kubernetes {target}: {len(affected)} cells affected, "
          f"{len(to_build)} builds run, ratio {len(to_build) / len(affected):.3f} (target 1.0); "
          f"replan took {elapsed:.3f} s")
    assert {c.id for c in to_build} == {c.id for c in affected}, "the builds run are not the cells affected"


if __name__ == "__main__":
    main()
