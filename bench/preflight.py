"""Preflight of the 1,000-cell matrix: seconds to check every download URL, against a mirror
that answers and against one that accepts connections and never answers.

Each minor's files get their own paths, so the baked cells need 40 x 7 distinct URLs. Cloud
credentials are not part of this figure (no clouds here); only the URL checks are timed.
"""

from __future__ import annotations

import http.server
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix1000 import write_matrix  # noqa: E402

from imagebuilder import preflight  # noqa: E402
from imagebuilder.config import load_matrix  # noqa: E402
from imagebuilder.planner import plan  # noqa: E402
from imagebuilder.versions import COMPONENTS  # noqa: E402


class Found(http.server.BaseHTTPRequestHandler):
    """Every path exists (a mirror holding the whole release tree)."""

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self.send_response(200)
        self.send_header("Content-Length", "1")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def distinct_paths(directory: Path) -> None:
    lock_path = directory / "versions.lock.yaml"
    lock = yaml.safe_load(lock_path.read_text())
    for minor, pins in lock["minors"].items():
        for component in pins["components"].values():
            for pinned in component["files"].values():
                pinned["path"] = f"{minor}/{pinned['path']}"
    lock_path.write_text(yaml.safe_dump(lock))


def timed(cells: list, mirror: str, matrix: Path) -> tuple[float, preflight.Report]:
    mirrored = [cell for cell in plan(load_matrix(with_mirrors(matrix, mirror)))
                if cell.strategy == "bake"]
    assert len(mirrored) == len(cells)
    started = time.monotonic()
    report = preflight.run(mirrored, "matrix.yaml", access=lambda cloud, settings: None)
    return time.monotonic() - started, report


def with_mirrors(matrix: Path, base_url: str) -> Path:
    data = yaml.safe_load(matrix.read_text())
    data["mirrors"] = {component: f"{base_url}/{component}" for component in COMPONENTS}
    matrix.write_text(yaml.safe_dump(data))
    return matrix


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        matrix = write_matrix(Path(tmp))
        distinct_paths(Path(tmp))
        cells = [cell for cell in plan(load_matrix(matrix)) if cell.strategy == "bake"]

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Found)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        seconds, report = timed(cells, f"http://127.0.0.1:{server.server_address[1]}", matrix)
        server.shutdown()
        print(f"good mirror:   {len(cells)} cells, {report.urls} URLs, {len(report.problems)} problems, "
              f"{seconds:.2f} s")

        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(1024)
            seconds, report = timed(cells, f"http://127.0.0.1:{silent.getsockname()[1]}", matrix)
        print(f"silent mirror: {len(cells)} cells, {report.urls} URLs, {len(report.problems)} problems, "
              f"{seconds:.2f} s (timeout {preflight.TIMEOUT_SECONDS:g} s per request)")


if __name__ == "__main__":
    main()
