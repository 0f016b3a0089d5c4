"""A moto server for the retention tests and bench, with the two things stock moto lacks.

Stock moto 5 has no EnableImageDeprecation (and so no DeprecationTime in DescribeImages),
and it looks tags up by scanning every tag of every resource, which makes listing
thousands of tagged images take minutes. ``patch_moto`` adds the deprecation calls
(EnableImageDeprecation / DisableImageDeprecation, DeprecationTime on the image; unlike
AWS it accepts past times, so tests can seed images deprecated weeks ago) and, when asked,
a direct tag lookup. Everything else is moto as shipped, over HTTP.

Run as a script it is the server: ``python tests/test_retention_services.py --port N
[--fast-tags] [--seed-images N --regions a,b]``; ``--seed-images`` registers tagged images
in-process before serving (the bench's 10,000 images in seconds rather than minutes).

This module holds no tests; pytest collects it only for its fixtures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from services import AWS_VARIABLES_TO_DROP, _stop, _wait_for, free_port, reset_moto  # noqa: E402


def patch_moto(fast_tags: bool = False) -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.responses.amis import AmisResponse

    def enable_image_deprecation(self: Any) -> ActionResult:
        image_id = self._get_param("ImageId")
        when = self._get_param("DeprecateAt")
        self.error_on_dryrun()
        image = self.ec2_backend.describe_images(ami_ids=[image_id])[0]
        if isinstance(when, datetime):
            when = when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        image.deprecation_time = str(when)
        return ActionResult({"Return": True})

    def disable_image_deprecation(self: Any) -> ActionResult:
        image = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
        image.deprecation_time = None
        return ActionResult({"Return": True})

    AmisResponse.enable_image_deprecation = enable_image_deprecation  # type: ignore[attr-defined]
    AmisResponse.disable_image_deprecation = disable_image_deprecation  # type: ignore[attr-defined]

    if fast_tags:
        from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

        def get_tags(self: Any) -> list[dict[str, str]]:
            tags = self.ec2_backend.tags.get(self.id) if self.id else None
            if not tags:
                return []
            kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
            return [{"resource_id": self.id, "resource_type": kind, "key": k, "value": v} for k, v in tags.items()]

        TaggedEC2Resource.get_tags = get_tags  # type: ignore[method-assign]


def seed_in_process(count: int, regions: list[str], seed: int = 1) -> None:
    """Register `count` imagebuilder images spread over the regions, straight into moto's backend."""
    import random

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    rng = random.Random(seed)
    per_region = count // len(regions)
    for region in regions:
        backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
        for index in range(per_region):
            tags = bench_tags(index, rng)
            image = backend.register_image(name=f"ib-{region}-{index:05d}", description="bench")
            backend.create_tags([image.id, image.ebs_snapshot.id], tags)
            if index % 3 == 0:  # a third deprecated long ago: deletable unless something keeps them
                image.deprecation_time = "2026-01-01T00:00:00.000Z"


OSES = ("debian-12", "ubuntu-2204", "rockylinux-9", "flatcar")
MINORS = ("1.31", "1.32", "1.33", "1.34", "1.35")


def bench_tags(index: int, rng: Any) -> dict[str, str]:
    os_id, minor, arch = OSES[index % 4], MINORS[(index // 4) % 5], ("amd64", "arm64")[(index // 20) % 2]
    day = 1 + rng.randrange(300)
    stamp = datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp() + day * 86400 + rng.randrange(86400)
    key = f"{index:064x}"
    return {
        "imagebuilder-os": os_id, "imagebuilder-os-version": "12", "imagebuilder-kubernetes-version": f"v{minor}.1",
        "imagebuilder-kubernetes-minor": minor, "imagebuilder-arch": arch, "imagebuilder-build-key": key,
        "imagebuilder-cell": f"aws-{os_id}-k8s-{minor}", "imagebuilder-version": "0.1.0",
        "imagebuilder-git-commit": "bench",
        "imagebuilder-build-timestamp": datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y%m%d%H%M%S"),
    }


@contextmanager
def patched_moto_server(log_dir: Path, fast_tags: bool = False, extra: list[str] | None = None) -> Iterator[str]:
    port = free_port()
    log = log_dir / "moto-retention.log"
    env = {**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
    args = [sys.executable, str(HERE), "--port", str(port), *(["--fast-tags"] if fast_tags else []), *(extra or [])]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/moto-api/", process, log, timeout=300)
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def retention_moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with patched_moto_server(tmp_path_factory.mktemp("retention-moto"), fast_tags=True) as url:
        yield url


def aws_environment(url: str, home: Path) -> dict[str, str]:
    """AWS_* pointing at the server with fake credentials, no shared config, no real credentials."""
    env = {name: value for name, value in os.environ.items() if name not in AWS_VARIABLES_TO_DROP}
    env.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(home / "aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials"), AWS_EC2_METADATA_DISABLED="true")
    return env


@pytest.fixture
def retention_aws(retention_moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    reset_moto(retention_moto_url)
    for name in AWS_VARIABLES_TO_DROP:
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_environment(retention_moto_url, tmp_path).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMAGEBUILDER_CACHE", str(tmp_path / "cache"))
    return retention_moto_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fast-tags", action="store_true")
    parser.add_argument("--seed-images", type=int, default=0)
    parser.add_argument("--regions", default="us-east-1,eu-west-1")
    options = parser.parse_args()
    os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    patch_moto(options.fast_tags)
    if options.seed_images:
        seed_in_process(options.seed_images, options.regions.split(","))
    from moto.server import main as moto_main

    moto_main(["-H", "127.0.0.1", "-p", str(options.port)])


if __name__ == "__main__":
    main()
