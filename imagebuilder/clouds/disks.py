"""Disk files for clouds that import locally built images: qcow2 or raw in, an aligned raw out."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from imagebuilder.clouds import CloudError
from imagebuilder.textline import one_line


def run_tool(command: list[str], subject: Path) -> str:
    if shutil.which(command[0]) is None:
        package = {"qemu-img": "qemu-utils"}.get(command[0], command[0])
        raise CloudError(f"{command[0]} not found | fix: apt-get install {package}")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CloudError(f"{subject}: {command[0]} {command[1]} failed: {one_line(result.stderr)[:300]} "
                         "| fix: check that the file is a whole disk image")
    return result.stdout


def disk_format(path: Path) -> str:
    return str(json.loads(run_tool(["qemu-img", "info", "--output=json", str(path)], path))["format"])


def aligned_raw(source: Path, work: Path, alignment: int) -> Path:
    """work/disk.raw: the source's disk as raw, its size rounded up to `alignment` (sparsely)."""
    raw = work / "disk.raw"
    run_tool(["qemu-img", "convert", "-f", disk_format(source), "-O", "raw", str(source), str(raw)], source)
    size = raw.stat().st_size
    aligned = max(alignment, -(-size // alignment) * alignment)
    if aligned != size:
        with raw.open("r+b") as handle:
            handle.truncate(aligned)
    return raw
