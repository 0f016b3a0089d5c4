"""Plan and render the generated 1,000-cell matrix; print the wall times (target: under 3 s together)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix1000 import write_matrix  # noqa: E402

from imagebuilder.config import load_matrix  # noqa: E402
from imagebuilder.planner import plan  # noqa: E402
from imagebuilder.render import render_cells  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        matrix_path = write_matrix(Path(tmp))
        start = time.perf_counter()
        cells = plan(load_matrix(matrix_path))
        planned = time.perf_counter()
        rendered = render_cells(cells, Path(tmp) / "build", (1, 6, 6))
        done = time.perf_counter()
        files = sum(len(r.files) for r in rendered)
    print(f"plan:   {len(cells)} cells in {planned - start:.3f} s")
    print(f"render: {len(rendered)} cells, {files} files in {done - planned:.3f} s")
    print(f"plan + render: {done - start:.3f} s wall (target < 3 s)")


if __name__ == "__main__":
    main()
