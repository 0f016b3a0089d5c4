"""Plan a generated 1,000-cell matrix; print the wall time and cells per second (target: under 1 s)."""

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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        matrix_path = write_matrix(Path(tmp))
        start = time.perf_counter()
        cells = plan(load_matrix(matrix_path))
        elapsed = time.perf_counter() - start
    print(f"plan: {len(cells)} cells in {elapsed:.3f} s wall ({len(cells) / elapsed:.0f} cells/s; target < 1 s)")


if __name__ == "__main__":
    main()
