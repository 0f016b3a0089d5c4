"""Plan the shipped matrix.yaml with its base images resolved against local services, and count
the calls: AWS on moto (the vendors' AMIs), OpenStack on a real Glance (the stock images by
name), GCP and Azure on their stand-ins (image families, marketplace versions), the qemu bases
on a local HTTP site (Debian's InRelease files, Ubuntu's SHA256SUMS, Rocky's CHECKSUM).

Prints the cells, the distinct (cloud, region, reference) lookups the plan needs, the API calls
made per cloud (resolution makes at most one per lookup, however many cells share it) and the
wall time of resolving and of the whole plan.

    python bench/base_resolution.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from base_mirror import base_mirrors, publish_debian, publish_rocky, publish_ubuntu  # noqa: E402
from mirror import serve_directory  # noqa: E402

from imagebuilder import baseimages  # noqa: E402
from imagebuilder.clouds import store_for  # noqa: E402
from imagebuilder.config import load_matrix  # noqa: E402
from imagebuilder.osinfo import OPERATING_SYSTEMS  # noqa: E402
from imagebuilder.planner import Cell, plan  # noqa: E402


@contextmanager
def counting_aws(counts: Counter[str]) -> Iterator[None]:
    import botocore.client

    real = botocore.client.BaseClient._make_api_call

    def counted(self: Any, operation: str, params: dict[str, Any]) -> Any:
        counts["aws"] += 1
        return real(self, operation, params)

    botocore.client.BaseClient._make_api_call = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        botocore.client.BaseClient._make_api_call = real  # type: ignore[method-assign]


def glance_images(url: str, root: Path) -> None:
    import openstack

    os.environ.update({"OS_AUTH_TYPE": "none", "OS_IMAGE_ENDPOINT_OVERRIDE": url + "/",
                       "OS_CLIENT_CONFIG_FILE": str(root / "no-clouds.yaml")})
    disk = root / "stock.raw"
    disk.write_bytes(b"stock" * 1024)
    conn = openstack.connect()
    for name in sorted({info.images["openstack"]["amd64"]["image_name"] for info in OPERATING_SYSTEMS.values()}):
        conn.image.create_image(name=name, filename=str(disk), disk_format="raw", container_format="bare", wait=True)


def standin_stores(gcp: Any, arm: Any) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from test_publish_azure import SUB, FakeCredential

    from imagebuilder.clouds.azure.store import AzureImageStore
    from imagebuilder.clouds.gcp.store import GcpImageStore
    from imagebuilder.clouds.azure.settings import AzureSettings
    from imagebuilder.clouds.gcp.settings import GcpSettings

    def factory(cell: Cell) -> Any:
        if cell.cloud == "gcp":
            return GcpImageStore(GcpSettings(**{k: v for k, v in cell.settings.items() if k in GcpSettings.model_fields}),
                                 credentials=AnonymousCredentials(), api_endpoint=gcp.base_url, backoff=0.0)
        if cell.cloud == "azure":
            settings = AzureSettings(**{k: v for k, v in cell.settings.items() if k in AzureSettings.model_fields})
            return AzureImageStore(settings, subscription_id=SUB, credential=FakeCredential(), base_url=arm.base_url,
                                   polling_interval=0, retry_total=0)
        return store_for(cell.cloud, cell.settings)

    return factory


def main() -> None:
    from services import glance_server, moto_server
    from standins.azure_compute import AzureComputeStandin
    from standins.gcp_compute import GcpComputeStandin

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        moto = stack.enter_context(moto_server(root))
        os.environ.update({"AWS_ENDPOINT_URL": moto, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
        (root / "glance").mkdir()
        glance_images(stack.enter_context(glance_server(root / "glance")), root)
        gcp, arm = GcpComputeStandin(), AzureComputeStandin()
        for server in (gcp, arm):
            server.start()
            stack.callback(server.stop)
        for number, info in enumerate(OPERATING_SYSTEMS.values()):
            family, project = info.images["gcp"]["amd64"]["family"], info.images["gcp"]["amd64"]["project"]
            name = f"{family}-v20250101"
            gcp.images[(project, name)] = {
                "kind": "compute#image", "id": str(1000 + number), "name": name, "family": family,
                "status": "READY", "creationTimestamp": "2025-01-01T00:00:00Z",
                "selfLink": gcp.link(project, "images", name)}
            azure = info.images["azure"]["amd64"]
            arm.marketplace[("westeurope", azure["publisher"], azure["offer"], azure["sku"])] = ["1.0.0", "1.0.1"]
        site = root / "site"
        publish_debian(site, "Sat, 01 Mar 2025 10:00:00 UTC")
        publish_ubuntu(site)
        publish_rocky(site)
        url = stack.enter_context(serve_directory(site))

        matrix = yaml.safe_load((ROOT / "matrix.yaml").read_text())
        matrix["mirrors"] = {**matrix.get("mirrors", {}), **base_mirrors(url)}
        (root / "versions.lock.yaml").write_text((ROOT / "versions.lock.yaml").read_text())
        (root / "matrix.yaml").write_text(yaml.safe_dump(matrix))

        counts: Counter[str] = Counter()
        started = time.perf_counter()
        loaded = load_matrix(root / "matrix.yaml")
        cells = plan(loaded)
        planned = time.perf_counter()
        gcp_before, arm_before = len(gcp.requests), len(arm.requests)
        resolver = baseimages.Resolver(store_for=standin_stores(gcp, arm))
        with counting_aws(counts):
            resolved = baseimages.resolve_cells(cells, loaded, resolver)
        done = time.perf_counter()
        counts["gcp"] = len(gcp.requests) - gcp_before
        counts["azure"] = len(arm.requests) - arm_before

    lookups = Counter(cloud for cloud, _, _ in resolver.memo)
    baked = [cell for cell in resolved if cell.strategy == "bake"]
    assert all("resolved" in cell.base_image for cell in baked), "a baked cell was not resolved"
    assert counts["aws"] <= lookups["aws"] and counts["gcp"] <= lookups["gcp"], (counts, lookups)
    print(f"base resolution, shipped matrix.yaml: {len(cells)} cells ({len(baked)} baked), "
          f"{len(resolver.memo)} distinct (cloud, region, reference) lookups, {resolver.calls} resolutions made")
    print("  per cloud, lookups / API calls counted at the client or the stand-in: " + ", ".join(
        f"{cloud} {lookups[cloud]}/{counts.get(cloud, '-')}" for cloud in ("aws", "gcp", "openstack", "azure", "qemu")))
    print(f"  plan from references {planned - started:.2f} s; resolution {done - planned:.2f} s wall "
          f"({resolver.seconds:.2f} s in lookups); whole plan {done - started:.2f} s")
    print("  " + json.dumps({cloud: lookups[cloud] for cloud in sorted(lookups)}))


if __name__ == "__main__":
    main()
