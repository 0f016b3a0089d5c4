"""A generated 1,000-cell matrix (5 OS x 5 clouds x 40 minors) for the benches."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MINORS = [f"1.{n}" for n in range(100, 140)]


def write_matrix(directory: Path) -> Path:
    template = yaml.safe_load((ROOT / "tests/data/versions.lock.yaml").read_text())["minors"]["1.31"]
    lock = {"schema": 1, "minors": {minor: copy.deepcopy(template) for minor in MINORS}}
    for index, minor in enumerate(MINORS):
        kubernetes = lock["minors"][minor]["components"]["kubernetes"]
        kubernetes["version"] = f"{minor}.{index % 7}"
    (directory / "versions.lock.yaml").write_text(yaml.safe_dump(lock))
    matrix = {
        "os": ["ubuntu-2204", "ubuntu-2404", "debian-12", "rockylinux-9", "flatcar"],
        "kubernetes": MINORS,
        "clouds": {
            "qemu": {},
            "aws": {"regions": ["us-east-1", "eu-west-1"]},
            "gcp": {"project_id": "bench"},
            "openstack": {},
            "azure": {"resource_group": "bench"},
        },
        "overrides": [{"match": {"cloud": "aws", "os": "ubuntu-*"}, "settings": {"instance_type": "m6i.large"}}],
    }
    path = directory / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix))
    return path
