"""Nightly no-op: 150 cells whose images are all in the catalogue already.

- local: the real `imagebuilder build` (plan, look every build key up, schedule) against a local
  catalogue holding all 150 images; prints its wall time (target: under 2 s). Packer runs for none.
- aws: 150 AWS cells whose AMIs exist in two regions of a moto server (over HTTP). Prints the
  number of EC2 calls the existence lookups make (one DescribeImages listing per region, however
  many cells), their client CPU time, and the wall time of the whole `imagebuilder build` command.

`python bench/nightly_noop.py [local|aws]` (both by default).
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from matrix1000 import MINORS, write_matrix  # noqa: E402

from imagebuilder import baseimages  # noqa: E402
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


def aws_only(matrix_path: Path) -> None:
    matrix = yaml.safe_load(matrix_path.read_text())
    matrix["clouds"] = {"aws": {"regions": REGIONS}}
    matrix["kubernetes"] = MINORS[:30]
    matrix["overrides"] = [{"match": {"os": "flatcar"}, "strategy": "bake"}]
    matrix_path.write_text(yaml.safe_dump(matrix))


REGIONS = ["us-east-1", "eu-west-1"]


def seed_amis(cells: list, ec2_clients: dict) -> None:
    """Every cell's AMI in every region, tagged as a finished publish leaves it."""
    from imagebuilder.metadata import PUBLISHED_TAG, PUBLISHED_VALUE

    for cell in cells:
        tags = {**cell_metadata(cell).to_tags(), PUBLISHED_TAG: PUBLISHED_VALUE}
        for region, ec2 in ec2_clients.items():
            image_id = ec2.register_image(Name=cell.id, Architecture="x86_64", RootDeviceName="/dev/xvda",
                                          VirtualizationType="hvm")["ImageId"]
            ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])


def main_aws() -> None:
    import boto3
    import botocore.client
    from services import moto_server

    from imagebuilder.pipeline import CatalogueLookup, changed_cells

    with tempfile.TemporaryDirectory() as tmp, moto_server(Path(tmp)) as url:
        root = Path(tmp)
        env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": REGIONS[0], "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        os.environ.update(env)
        matrix_path = write_matrix(root)
        aws_only(matrix_path)
        loaded = load_matrix(matrix_path)
        # as `build` plans them: the bases resolved (moto serves the vendors' AMIs)
        cells = baseimages.resolve_cells(plan(loaded), loaded, baseimages.Resolver())
        seed_amis(cells, {region: boto3.client("ec2", region_name=region) for region in REGIONS})

        calls: list[str] = []
        real_call = botocore.client.BaseClient._make_api_call

        def counting(self, operation, params):  # type: ignore[no-untyped-def]
            calls.append(operation)
            return real_call(self, operation, params)

        botocore.client.BaseClient._make_api_call = counting  # type: ignore[method-assign]
        cpu, wall = time.process_time(), time.perf_counter()
        changed = changed_cells(cells, CatalogueLookup())
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        botocore.client.BaseClient._make_api_call = real_call  # type: ignore[method-assign]
        print(f"nightly no-op, aws on moto: {len(cells)} cells x {len(REGIONS)} regions, {len(changed)} changed, "
              f"{len(calls)} EC2 calls ({calls.count('DescribeImages')} DescribeImages), lookups "
              f"{cpu:.2f} s client CPU / {wall:.2f} s wall")

        command = [sys.executable, "-m", "imagebuilder.cli", "build", "-m", str(matrix_path), "-o",
                   str(root / "build"), "--skip-preflight"]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "CI": "true"})
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"build failed: {result.stderr[-2000:]}")
        counts = re.search(r"(\d+) cells skipped", result.stdout)
        print(f"nightly no-op, aws on moto: `imagebuilder build` skipped {counts.group(1) if counts else 0} "
              f"of {len(cells)} cells in {elapsed:.2f} s wall for the whole command (target < 2 s)")


def main() -> None:
    which = sys.argv[1:] or ["local", "aws"]
    if "local" in which:
        main_local()
    if "aws" in which:
        main_aws()


def main_local() -> None:
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
        # the local catalogue only: no Debian or Ubuntu site to resolve the bases against
        command = [sys.executable, "-m", "imagebuilder.cli", "build", "-m", str(matrix_path), "-o", str(root / "build"),
                   "--offline"]
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
