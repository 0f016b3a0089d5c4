"""Azure gallery image versions: one scheme (imagebuilder.clouds.azure.versions) that fits Azure's int32 parts,
sorts by build time and differs for builds a minute apart; the same in the Packer template and the store."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagebuilder.clouds.azure import versions as azure_version
from imagebuilder.clouds.azure.versions import INT32_MAX, gallery_version, hcl_patch_expression, is_valid

pytest.importorskip("azure.mgmt.compute")

from azure.core.credentials import AccessToken  # noqa: E402
from azure.core.exceptions import HttpResponseError  # noqa: E402
from azure.mgmt.compute import models as m  # noqa: E402

from imagebuilder.artifact import Artifact  # noqa: E402
from imagebuilder.clouds.azure.store import AzureImageStore, version_name  # noqa: E402
from imagebuilder.clouds.azure.settings import AzureSettings  # noqa: E402
from imagebuilder.config import load_matrix  # noqa: E402
from imagebuilder.metadata import ImageMetadata  # noqa: E402
from imagebuilder.planner import plan  # noqa: E402
from imagebuilder.render import render_cells  # noqa: E402
from standins.azure_compute import AzureComputeStandin  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
UTC = timezone.utc
SUB = "00000000-1111-2222-3333-444444444444"
RG = "capi-images"
MANAGED = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/"
NEW_YEARS_EVE = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)


def parts(version: str) -> tuple[int, ...]:
    """How Azure orders versions: part by part, as integers."""
    return tuple(int(part) for part in version.split("."))


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S")


# ------------------------------------------------------------------ the scheme


@pytest.mark.parametrize("year", [2026, 2099, 2400, 6000])
def test_the_last_second_of_a_year_fits(year: int) -> None:
    version = gallery_version("1.35", datetime(year, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert is_valid(version) and all(part <= INT32_MAX for part in parts(version)), version
    assert version.startswith("1.35.")


def test_the_old_timestamp_scheme_did_not_fit() -> None:
    assert not is_valid(f"1.35.{stamp(NEW_YEARS_EVE)}")  # 20261231235959 > 2147483647
    assert not is_valid("1.35.2147483648") and is_valid("1.35.2147483647")


def test_builds_a_minute_apart_are_unique_and_ordered() -> None:
    times = [NEW_YEARS_EVE, NEW_YEARS_EVE + timedelta(minutes=1), NEW_YEARS_EVE + timedelta(minutes=2, seconds=30),
             datetime(2027, 3, 1, tzinfo=UTC), datetime(2028, 2, 29, 12, 0, tzinfo=UTC)]
    versions = [gallery_version("1.35", when) for when in times]
    assert len(set(versions)) == len(versions)
    assert [parts(v) for v in versions] == sorted(parts(v) for v in versions)
    assert all(is_valid(v) for v in versions)
    assert parts(versions[1])[2] - parts(versions[0])[2] == 1


def test_a_time_azure_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="outside 2020"):
        gallery_version("1.35", datetime(2019, 12, 31, 23, 59, tzinfo=UTC))


def test_the_store_reads_the_time_packer_recorded() -> None:
    meta = metadata(stamp(NEW_YEARS_EVE))
    assert meta.built_at() == NEW_YEARS_EVE
    assert version_name(meta) == gallery_version("1.31", NEW_YEARS_EVE)


# ------------------------------------------------------------------ the Packer template


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed")
def test_packer_computes_the_same_patch_as_python(tmp_path: Path) -> None:
    """The HCL the template carries, evaluated by Packer itself, against the Python arithmetic."""
    (tmp_path / "console.pkr.hcl").write_text(
        'source "null" "x" {\n  communicator = "none"\n}\n\nbuild {\n  sources = ["source.null.x"]\n}\n')
    times = [datetime(2020, 1, 1, tzinfo=UTC), NEW_YEARS_EVE, datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
             datetime(2024, 3, 1, tzinfo=UTC), datetime(2100, 3, 1, 0, 1, tzinfo=UTC),
             datetime(2400, 12, 31, 23, 59, tzinfo=UTC), datetime(2026, 12, 3, 6, 48, 28, tzinfo=UTC)]
    for when in times:
        expression = hcl_patch_expression(f'"{stamp(when)}"')
        result = subprocess.run(["packer", "console", str(tmp_path / "console.pkr.hcl")], input=expression,
                                capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == str(azure_version.build_minute(when)), (when, result.stderr[-400:])


def test_plan_render_and_template_use_the_scheme(tmp_path: Path) -> None:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    matrix = {"os": ["debian-12"], "kubernetes": ["1.31"], "clouds": {"azure": {"resource_group": RG}}}
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(matrix))
    (cell,) = plan(load_matrix(tmp_path / "matrix.yaml"))
    assert cell.image_name == "capi-debian-12-k8s-1.31/1.31.{build_minute}"
    (rendered,) = render_cells([cell], tmp_path / "build")
    template = (rendered.directory / "azure.pkr.hcl").read_text()
    variables = (rendered.directory / "cell.auto.pkrvars.hcl").read_text()
    assert f"azure_build_minute = {hcl_patch_expression('local.timestamp')}\n" in template
    assert 'image_version       = "${var.azure_version_prefix}${local.azure_build_minute}"' in template
    assert template.count("timestamp()") == 1  # one build time (local.timestamp), not two
    assert 'azure_version_prefix = "1.31."' in variables.replace("  ", " ").replace("  ", " ")


# ------------------------------------------------------------------ the store and the stand-in


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-arm-token-not-a-secret", int(time.time()) + 3600)


def metadata(build_timestamp: str, key: str = "a") -> ImageMetadata:
    return ImageMetadata(os="debian-12", os_version="12", kubernetes_version="v1.31.4", kubernetes_minor="1.31",
                         arch="amd64", build_key=key * 64, cell="azure-debian-12-k8s-1.31", version="0.1.0",
                         git_commit="0123abc", build_timestamp=build_timestamp)


@pytest.fixture()
def arm() -> Iterator[AzureComputeStandin]:
    server = AzureComputeStandin(managed_images={MANAGED + name for name in ("one", "two", "three")})
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def store(arm: AzureComputeStandin) -> AzureImageStore:
    settings = AzureSettings(resource_group=RG, location="westeurope")
    return AzureImageStore(settings, subscription_id=SUB, credential=FakeCredential(), base_url=arm.base_url,
                           polling_interval=0, retry_total=0, sleep=lambda _: None)


def test_the_stand_in_rejects_parts_over_int32(store: AzureImageStore, arm: AzureComputeStandin) -> None:
    store.publish(artifact(metadata(stamp(NEW_YEARS_EVE)), "one"))  # makes the gallery and definition
    definition = "capi-debian-12-k8s-1.31"
    body = m.GalleryImageVersion(location="westeurope", properties=m.GalleryImageVersionProperties(
        storage_profile=m.GalleryImageVersionStorageProfile(source=m.GalleryArtifactVersionFullSource(
            id=MANAGED + "two"))))
    for name in (f"1.31.{stamp(NEW_YEARS_EVE)}", "1.31.2147483648", "2147483648.0.1"):
        with pytest.raises(HttpResponseError, match="32-bit integer"):
            store.client.gallery_image_versions.begin_create_or_update(RG, store.gallery, definition, name, body)
    store.client.gallery_image_versions.begin_create_or_update(RG, store.gallery, definition, "1.31.2147483647",
                                                               body).result()
    assert {v["name"] for v in arm.versions()} == {gallery_version("1.31", NEW_YEARS_EVE), "1.31.2147483647"}


def artifact(meta: ImageMetadata, managed: str) -> Artifact:
    return Artifact(cell_id=meta.cell, cloud="azure", build_key=meta.build_key, image_name=f"{meta.cell}-{managed}",
                    metadata=meta, ids={"default": MANAGED + managed})


def test_builds_a_minute_apart_publish_as_ordered_versions(store: AzureImageStore, arm: AzureComputeStandin) -> None:
    builds = [(NEW_YEARS_EVE, "a", "one"), (NEW_YEARS_EVE + timedelta(minutes=1), "b", "two")]
    for when, key, managed in builds:
        store.publish(artifact(metadata(stamp(when), key), managed))
    names = sorted((v["name"] for v in arm.versions()), key=parts)
    assert names == [gallery_version("1.31", when) for when, _, _ in builds]
    newest = store.list_images()[0]
    assert newest.metadata is not None and newest.metadata.build_key == "b" * 64
