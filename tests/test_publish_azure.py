"""Publish to an Azure Compute Gallery through the real azure-mgmt-compute and azure-storage-blob SDKs.

ARM has no emulator: tests/standins/azure_compute.py serves the gallery, image definition
and version paths (with Azure-AsyncOperation long-running operations) the SDK really calls,
and records what it sent. The blob side is Azurite, installed from npm and run for real.
"""

from __future__ import annotations

import logging
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.mgmt.compute")
pytest.importorskip("azure.storage.blob")

from azure.core.credentials import AccessToken  # noqa: E402
from azure.storage.blob import BlobClient, BlobServiceClient, BlobType  # noqa: E402

from conftest import test_cache_dir as cache_dir  # noqa: E402
from imagebuilder.artifact import Artifact  # noqa: E402
from imagebuilder.clouds import CloudError, ImageFilter, store_for  # noqa: E402
from azure.mgmt.compute import models as m  # noqa: E402
from imagebuilder.clouds.azure.settings import AzureSettings  # noqa: E402
from imagebuilder.clouds.azure.store import AzureImageStore, definition_name, version_name, version_update  # noqa: E402
from imagebuilder.metadata import ImageMetadata  # noqa: E402
from standins.azure_compute import AzureComputeStandin  # noqa: E402
from standins.azurite import Azurite, running_azurite  # noqa: E402

SUB = "00000000-1111-2222-3333-444444444444"
RG = "capi-images"
GALLERY = "capi_images"
TOKEN = "fake-arm-token-not-a-secret"
GALLERY_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/{GALLERY}"
DEFINITION = "capi-debian-12-k8s-1.31"
VERSIONS = f"{GALLERY_PATH}/images/{DEFINITION}/versions"
MANAGED_IMAGE = (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/"
                 "azure-debian-12-k8s-1.31-1764064800")


class FakeCredential:
    """A TokenCredential handing out a fixed token (what DefaultAzureCredential does for real)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(TOKEN, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with running_azurite(cache_dir() / "node") as server:
        yield server


@pytest.fixture()
def arm(azurite: Azurite) -> Iterator[AzureComputeStandin]:
    def validate_vhd(uri: str) -> str | None:
        """What Azure checks of a VHD source: a page blob holding a fixed VHD of whole MiB."""
        blob = BlobClient.from_blob_url(uri, credential=azurite.credential)
        props = blob.get_blob_properties()
        if props.blob_type != BlobType.PAGEBLOB:
            return f"{uri} is a {props.blob_type}, not a page blob"
        footer = blob.download_blob(offset=props.size - 512, length=512).readall()
        if footer[:8] != b"conectix" or struct.unpack(">I", footer[60:64])[0] != 2:
            return f"{uri} is not a fixed VHD"
        if (props.size - 512) % (1 << 20):
            return f"{uri}: the virtual size {props.size - 512} is not a whole MiB"
        if blob.download_blob(offset=0, length=17).readall() != b"IMAGEBUILDER-DISK":
            return f"{uri}: the disk's content did not arrive"
        return None

    server = AzureComputeStandin(validate_vhd=validate_vhd, managed_images={MANAGED_IMAGE})
    server.start()
    yield server
    server.stop()


def make_store(arm: AzureComputeStandin, azurite: Azurite, **options: Any) -> AzureImageStore:
    settings = AzureSettings(resource_group=RG, gallery=GALLERY, location="westeurope",
                             target_regions=["northeurope", "westeurope"], replica_count=2)
    options = {"retry_total": 3, "retry_backoff": 0.0, **options}
    return AzureImageStore(settings, subscription_id=SUB, credential=FakeCredential(), base_url=arm.base_url,
                           storage_account=azurite.account, blob_endpoint=azurite.blob_endpoint,
                           blob_credential=azurite.credential, polling_interval=0, sleep=lambda _: None,
                           **options)


@pytest.fixture()
def store(arm: AzureComputeStandin, azurite: Azurite) -> AzureImageStore:
    return make_store(arm, azurite)


def metadata(timestamp: str, key_char: str = "a", arch: str = "amd64") -> ImageMetadata:
    return ImageMetadata(os="debian-12", os_version="12", kubernetes_version="v1.31.4", kubernetes_minor="1.31",
                         arch=arch, build_key=key_char * 64, cell="qemu-debian-12-k8s-1.31", version="0.1.0",
                         git_commit="0123abc", build_timestamp=timestamp)


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("disk")
    raw = work / "seed.raw"
    raw.write_bytes(b"IMAGEBUILDER-DISK" + bytes(3 * 1024 * 1024 + 4096 - 17))  # not a whole MiB
    disk = work / "node.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], check=True)
    return disk


def local_artifact(disk: Path, meta: ImageMetadata) -> Artifact:
    return Artifact(cell_id=meta.cell, cloud="qemu", build_key=meta.build_key,
                    image_name=f"debian-12-kube-v1.31.4-{meta.build_timestamp}", metadata=meta,
                    ids={"local": str(disk)}, files=[str(disk)])


def packer_artifact(meta: ImageMetadata) -> Artifact:
    return Artifact(cell_id="azure-debian-12-k8s-1.31", cloud="azure", build_key=meta.build_key,
                    image_name="azure-debian-12-k8s-1.31-1764064800", metadata=meta, ids={"default": MANAGED_IMAGE})


def blobs(azurite: Azurite) -> list[str]:
    service = BlobServiceClient(account_url=azurite.blob_endpoint, credential=azurite.credential)
    container = service.get_container_client("imagebuilder")
    return [b.name for b in container.list_blobs()] if container.exists() else []


def test_a_local_disk_becomes_a_replicated_tagged_gallery_version(
        store: AzureImageStore, arm: AzureComputeStandin, azurite: Azurite, qcow2: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    meta = metadata("1764064800")
    ids = store.publish(local_artifact(qcow2, meta))

    version_id = f"{VERSIONS}/1.31.3103800"
    assert ids == {"westeurope": version_id, "northeurope": version_id}
    (gallery_put,) = arm.calls("PUT", f"{GALLERY_PATH}$")
    assert gallery_put.body["location"] == "westeurope"
    (definition_put,) = arm.calls("PUT", f"/images/{DEFINITION}$")
    props = definition_put.body["properties"]
    assert props["identifier"] == {"publisher": "imagebuilder", "offer": "capi-debian-12", "sku": "k8s-1.31-amd64"}
    assert (props["osType"], props["osState"], props["hyperVGeneration"], props["architecture"]) == (
        "Linux", "Generalized", "V2", "x64")
    (version_put,) = arm.calls("PUT", f"{VERSIONS}/")
    body = version_put.body
    assert body["tags"] == meta.to_tags()  # Azure tags hold the values whole
    profile = body["properties"]["publishingProfile"]
    assert profile["targetRegions"] == [
        {"name": "westeurope", "regionalReplicaCount": 2, "storageAccountType": "Standard_LRS"},
        {"name": "northeurope", "regionalReplicaCount": 2, "storageAccountType": "Standard_LRS"}]
    assert profile["excludeFromLatest"] is False and profile["replicaCount"] == 2
    source = body["properties"]["storageProfile"]["osDiskImage"]["source"]
    assert source["uri"] == f"{azurite.blob_endpoint}/imagebuilder/{DEFINITION}/1.31.3103800.vhd"
    assert source["storageAccountId"].endswith("/providers/Microsoft.Storage/storageAccounts/devstoreaccount1")
    # every request carried api-version and the bearer token; the SDK polled the async operations
    assert all(r.query.get("api-version") for r in arm.requests)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in arm.requests)
    assert len(arm.calls("GET", "/locations/westeurope/operations/")) >= 6
    assert TOKEN not in caplog.text

    assert arm.resource(version_id)["properties"]["provisioningState"] == "Succeeded"
    assert blobs(azurite) == []  # the VHD went away once the version held it
    (record,) = store.find_by_build_key(meta.build_key)
    assert record.metadata == meta and record.state == "available" and record.image_id == version_id
    assert record.extra["target_regions"] == ["westeurope", "northeurope"]
    assert store.list_images(ImageFilter(kubernetes_minor="1.30")) == []


def test_publishing_again_changes_nothing(store: AzureImageStore, arm: AzureComputeStandin, azurite: Azurite,
                                          qcow2: Path) -> None:
    artifact = local_artifact(qcow2, metadata("1764064800"))
    first = store.publish(artifact)
    writes = len(arm.calls("PUT")) + len(arm.calls("PATCH"))
    assert make_store(arm, azurite).publish(artifact) == first
    assert len(arm.calls("PUT")) + len(arm.calls("PATCH")) == writes
    assert len(arm.versions()) == 1


def test_a_packer_managed_image_is_published_as_a_version(store: AzureImageStore, arm: AzureComputeStandin) -> None:
    meta = metadata("1764064800")
    store.publish(packer_artifact(meta))
    (put,) = arm.calls("PUT", f"{VERSIONS}/")
    assert put.body["properties"]["storageProfile"] == {"source": {"id": MANAGED_IMAGE}}
    assert put.path.endswith("/1.31.3103800")


def test_a_variant_has_its_own_definition_with_its_security_type(store: AzureImageStore,
                                                                   arm: AzureComputeStandin) -> None:
    """Beside the default definition, in the same gallery (identifiers are unique there)."""
    store.ensure_gallery()
    default, cvm = metadata("1764064800"), replace(metadata("1764064800"), variant="cvm")
    assert (store.ensure_definition(default), store.ensure_definition(cvm)) == (DEFINITION, "capi-debian-12-cvm-k8s-1.31")
    (default_put,) = arm.calls("PUT", f"/images/{DEFINITION}$")
    (cvm_put,) = arm.calls("PUT", "/images/capi-debian-12-cvm-k8s-1.31$")
    assert "features" not in default_put.body["properties"]
    assert cvm_put.body["properties"]["features"] == [{"name": "SecurityType", "value": "ConfidentialVmSupported"}]
    assert cvm_put.body["properties"]["identifier"]["sku"] == "k8s-1.31-amd64-cvm"
    assert (default_put.body["properties"]["hyperVGeneration"], cvm_put.body["properties"]["hyperVGeneration"]) == (
        "V2", "V2")


def test_the_gen1_variant_has_a_generation_1_definition(store: AzureImageStore, arm: AzureComputeStandin) -> None:
    """image-builder's plain azure-sig images: Packer's VM boots the vendor's generation 1 SKU, so
    the definition its version goes into must say V1 (a V2 one refuses it)."""
    store.ensure_gallery()
    gen1 = replace(metadata("1764064800"), variant="gen1")
    assert store.ensure_definition(gen1) == "capi-debian-12-gen1-k8s-1.31"
    (put,) = arm.calls("PUT", "/images/capi-debian-12-gen1-k8s-1.31$")
    assert put.body["properties"]["hyperVGeneration"] == "V1"
    assert put.body["properties"]["identifier"]["sku"] == "k8s-1.31-amd64-gen1"
    assert "features" not in put.body["properties"]


def test_a_version_packer_made_is_found_and_completed(store: AzureImageStore, arm: AzureComputeStandin) -> None:
    store.ensure_gallery()
    store.ensure_definition(metadata("1764064800"))
    packer_version = f"{VERSIONS}/1.31.3103799"
    arm.resources[packer_version.lower()] = {
        "id": packer_version, "name": "1.31.3103799", "type": "Microsoft.Compute/galleries/images/versions",
        "location": "westeurope", "tags": {"made-by": "packer"},
        "properties": {"provisioningState": "Succeeded", "storageProfile": {"source": {"id": MANAGED_IMAGE}},
                       "publishingProfile": {"targetRegions": [{"name": "westeurope", "regionalReplicaCount": 1}],
                                             "publishedDate": "2026-11-25T10:00:00+00:00"}}}
    ids = store.publish(packer_artifact(metadata("1764064800")))
    assert set(ids.values()) == {packer_version}
    assert not arm.calls("PUT", f"{VERSIONS}/")
    patch, published = arm.calls("PATCH", packer_version)  # the published tag last, on its own
    assert published.body["tags"]["imagebuilder-published"] == "true"
    assert "imagebuilder-published" not in patch.body["tags"]
    assert patch.body["tags"]["made-by"] == "packer"
    assert patch.body["tags"]["imagebuilder-build-key"] == "a" * 64
    assert [r["name"] for r in patch.body["properties"]["publishingProfile"]["targetRegions"]] == [
        "westeurope", "northeurope"]
    assert {r["regionalReplicaCount"] for r in patch.body["properties"]["publishingProfile"]["targetRegions"]} == {2}


def test_a_failed_operation_is_a_clear_error_and_a_rerun_replaces_the_failed_version(
        store: AzureImageStore, arm: AzureComputeStandin, qcow2: Path) -> None:
    store.ensure_gallery()
    store.ensure_definition(metadata("1764064800"))
    arm.fail_next_operation.append({"code": "InternalOperationError", "message": "Replication failed in northeurope"})
    artifact = local_artifact(qcow2, metadata("1764064800"))
    with pytest.raises(CloudError, match="create version .*Replication failed in northeurope"):
        store.publish(artifact)
    (failed,) = arm.versions()
    assert failed["properties"]["provisioningState"] == "Failed"
    assert store.find_by_build_key(artifact.build_key) == []  # nothing launchable: the cell still needs a build
    store.publish(artifact)
    assert arm.calls("DELETE", f"{VERSIONS}/1.31.3103800")
    (version,) = arm.versions()
    assert version["properties"]["provisioningState"] == "Succeeded"


def test_a_vhd_azure_would_refuse_fails_the_operation(store: AzureImageStore, arm: AzureComputeStandin,
                                                      qcow2: Path) -> None:
    arm.validate_vhd = lambda uri: "The VHD is not a fixed VHD"
    with pytest.raises(CloudError, match="not a fixed VHD"):
        store.publish(local_artifact(qcow2, metadata("1764064800")))


def test_429s_are_retried_without_a_duplicate(store: AzureImageStore, arm: AzureComputeStandin, qcow2: Path) -> None:
    arm.fail("PUT", f"{VERSIONS}/", 429, {"error": {"code": "TooManyRequests", "message": "slow down"}}, times=2,
             headers={"Retry-After": "0"})
    store.publish(local_artifact(qcow2, metadata("1764064800")))
    assert len(arm.calls("PUT", f"{VERSIONS}/")) == 3
    assert len(arm.versions()) == 1


def test_throttling_that_never_ends_is_a_bounded_clear_error(arm: AzureComputeStandin, azurite: Azurite,
                                                             qcow2: Path) -> None:
    store = make_store(arm, azurite, retry_total=2)
    arm.fail("PUT", f"{VERSIONS}/", 429, {"error": {"code": "TooManyRequests", "message": "slow down"}}, times=99,
             headers={"Retry-After": "0"})
    with pytest.raises(CloudError, match="still throttled or unavailable after retries"):
        store.publish(local_artifact(qcow2, metadata("1764064800")))
    assert len(arm.calls("PUT", f"{VERSIONS}/")) == 3
    assert arm.versions() == []


def test_a_quota_error_is_clear_and_not_retried(store: AzureImageStore, arm: AzureComputeStandin,
                                                qcow2: Path) -> None:
    arm.fail("PUT", f"{VERSIONS}/", 409, {"error": {"code": "QuotaExceeded",
                                                    "message": "Gallery image version quota of 1000 reached"}})
    with pytest.raises(CloudError, match=r"quota exceeded \(QuotaExceeded: .*\) \| fix: raise the quota"):
        store.publish(local_artifact(qcow2, metadata("1764064800")))
    assert len(arm.calls("PUT", f"{VERSIONS}/")) == 1


def test_deprecate_sets_end_of_life_and_excludes_from_latest(store: AzureImageStore, arm: AzureComputeStandin,
                                                            qcow2: Path) -> None:
    store.publish(local_artifact(qcow2, metadata("1700000000", "a")))
    store.publish(local_artifact(qcow2, metadata("1764064800", "b")))
    old = store.list_images()[-1]
    assert old.extra["version"] == "1.31.2036053" and not old.deprecated()
    when = datetime.now(timezone.utc).replace(microsecond=0)
    end_of_life = when + timedelta(days=14)
    store.deprecate(old, when, end_of_life=end_of_life)
    patch = arm.calls("PATCH", old.image_id)[-1]
    assert patch.body["properties"]["publishingProfile"] == {
        "excludeFromLatest": True, "endOfLifeDate": end_of_life.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert patch.body["tags"]["imagebuilder-build-key"] == "a" * 64  # the whole tag set, ours kept
    old, new = store.list_images()[1], store.list_images()[0]
    # the grace counts from the deprecation (a tag), not from the end of life it leads to
    assert old.deprecated() and old.deprecated_at == when and not new.deprecated()
    assert arm.resource(old.image_id)["properties"]["publishingProfile"]["targetRegions"]  # merged, not replaced


def test_deprecation_sends_a_future_end_of_life_and_azure_refuses_a_past_one(
        store: AzureImageStore, arm: AzureComputeStandin, qcow2: Path) -> None:
    store.publish(local_artifact(qcow2, metadata("1764064800")))
    (record,) = store.list_images()
    store.deprecate(record, datetime.now(timezone.utc), end_of_life=datetime.now(timezone.utc))  # a grace of 0
    sent = arm.calls("PATCH", record.image_id)[-1].body["properties"]["publishingProfile"]["endOfLifeDate"]
    assert datetime.fromisoformat(sent.replace("Z", "+00:00")) > datetime.now(timezone.utc) + timedelta(minutes=59)
    for past in (datetime(2026, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc)):  # as the old code sent
        profile = m.GalleryImageVersionPublishingProfile(exclude_from_latest=True, end_of_life_date=past)
        with pytest.raises(CloudError, match=r"failed \(InvalidParameter: EndOfLifeDate must be set to a future date"):
            store._patch(record, version_update(profile), "deprecate version")
    assert arm.resource(record.image_id)["properties"]["publishingProfile"]["endOfLifeDate"] == sent  # unchanged


def test_delete_and_a_safety_profile_that_blocks_it(store: AzureImageStore, arm: AzureComputeStandin,
                                                   qcow2: Path) -> None:
    store.publish(local_artifact(qcow2, metadata("1764064800")))
    (record,) = store.list_images()
    arm.resource(record.image_id)["properties"]["safetyProfile"] = {"blockDeletionBeforeEndOfLife": True}
    with pytest.raises(CloudError, match="not allowed .*end of life"):
        store.delete(record)
    store.deprecate(record, datetime.now(timezone.utc))
    with pytest.raises(CloudError, match="not allowed .*end of life"):  # the end of life lies ahead
        store.delete(record)
    past = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    arm.resource(record.image_id)["properties"]["publishingProfile"]["endOfLifeDate"] = past  # time passes
    assert store.delete(record) == [record.image_id]
    assert arm.versions() == [] and store.list_images() == []


def test_copy_tag_and_share(store: AzureImageStore, arm: AzureComputeStandin, qcow2: Path) -> None:
    store.publish(local_artifact(qcow2, metadata("1764064800")))
    (record,) = store.list_images()
    ids = store.copy_to_regions(record, ["eastus"])
    assert set(ids) == {"westeurope", "northeurope", "eastus"}
    regions = arm.resource(record.image_id)["properties"]["publishingProfile"]["targetRegions"]
    assert [r["name"] for r in regions] == ["westeurope", "northeurope", "eastus"]
    store.tag(record, {"imagebuilder-protect": "true"})
    assert arm.resource(record.image_id)["tags"]["imagebuilder-protect"] == "true"
    assert arm.resource(record.image_id)["tags"]["imagebuilder-os"] == "debian-12"
    store.share(record, ["99999999-0000-0000-0000-000000000000"])
    (share,) = arm.calls("POST", f"{GALLERY_PATH}/share")
    assert share.body == {"operationType": "Add", "groups": [
        {"type": "Subscriptions", "ids": ["99999999-0000-0000-0000-000000000000"]}]}
    with pytest.raises(CloudError, match="community gallery"):
        store.share(record, public=True)


def test_listing_follows_pages_across_definitions(arm: AzureComputeStandin, azurite: Azurite, qcow2: Path) -> None:
    arm.page_size = 1
    store = make_store(arm, azurite)
    store.publish(local_artifact(qcow2, metadata("1700000000", "a")))
    store.publish(local_artifact(qcow2, metadata("1710000000", "b")))
    store.publish(local_artifact(qcow2, metadata("1720000000", "c", arch="arm64")))
    assert [r.extra["version"] for r in store.list_images()] == ["1.31.2369386", "1.31.2202720",
                                                                 "1.31.2036053"]
    assert [r.name for r in store.list_images(ImageFilter(arch="arm64"))] == [
        "capi-debian-12-k8s-1.31-arm64/1.31.2369386"]
    assert any("$skiptoken" in r.query for r in arm.calls("GET", f"{VERSIONS}$"))


def test_tokens_go_over_plain_http_to_loopback_only() -> None:
    settings = AzureSettings(resource_group=RG)
    store = AzureImageStore(settings, subscription_id=SUB, credential=FakeCredential(),
                            base_url="http://arm.example.com")
    with pytest.raises(CloudError, match="plain http"):
        _ = store.client


def test_no_subscription_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    store = store_for("azure", {"resource_group": RG, "vm_size": "Standard_D4s_v3"}, credential=FakeCredential())
    assert isinstance(store, AzureImageStore) and store.rg == RG
    with pytest.raises(CloudError, match="AZURE_SUBSCRIPTION_ID"):
        _ = store.client


def test_names_follow_the_planner() -> None:
    assert definition_name(metadata("1")) == DEFINITION
    assert definition_name(metadata("1", arch="arm64")) == DEFINITION + "-arm64"
    # A variant is its own definition (a definition has one security type).
    assert definition_name(replace(metadata("1", arch="arm64"), variant="cvm")) == "capi-debian-12-cvm-k8s-1.31-arm64"
    assert version_name(metadata("1764064800")) == "1.31.3103800"  # 2025-11-25 10:00 UTC as unix seconds
    assert version_name(metadata("20251125100000")) == "1.31.3103800"  # ... as Packer's timestamp
    before = int(time.time() - 1577836800) // 60
    unrecorded = int(version_name(metadata("")).split(".")[2])  # no build time: the minute it is published
    assert before <= unrecorded <= int(time.time() - 1577836800) // 60


def test_in_use_finds_machines_and_scale_sets(store: AzureImageStore, arm: AzureComputeStandin, qcow2: Path) -> None:
    store.publish(local_artifact(qcow2, metadata("1700000000", "a")))
    store.publish(local_artifact(qcow2, metadata("1764064800", "b")))
    new, old = store.list_images()
    definition_id = f"{GALLERY_PATH}/images/{DEFINITION}"
    arm.machines = [
        {"id": "/vm/a", "name": "pinned", "location": "westeurope",
         "properties": {"storageProfile": {"imageReference": {"id": old.image_id.upper()}}}},
        {"id": "/vm/b", "name": "from-latest", "location": "westeurope", "properties": {
            "storageProfile": {"imageReference": {"id": definition_id, "exactVersion": "1.31.3103800"}}}},
        {"id": "/vm/c", "name": "marketplace", "location": "westeurope",
         "properties": {"storageProfile": {"imageReference": {"publisher": "Debian", "offer": "debian-12"}}}},
    ]
    arm.scale_sets = [{"id": "/vmss/a", "name": "workers", "location": "westeurope", "properties": {
        "virtualMachineProfile": {"storageProfile": {"imageReference": {"id": old.image_id}}}}}]
    assert store.images_in_use([new, old]) == {new.image_id: ["virtual machine from-latest"],
                                                old.image_id: ["virtual machine pinned", "scale set workers"]}
    arm.machines, arm.scale_sets = [], []
    assert store.in_use(old) == []


def test_a_version_name_held_by_another_build_is_refused(store: AzureImageStore, arm: AzureComputeStandin,
                                                         qcow2: Path) -> None:
    store.publish(local_artifact(qcow2, metadata("1764064800", "a")))
    with pytest.raises(CloudError, match="version capi-debian-12-k8s-1.31/1.31.3103800 exists and is not build "
                                         "bbbbbbbbbbbb"):
        store.publish(local_artifact(qcow2, metadata("1764064800", "b")))
    (version,) = arm.versions()
    assert version["tags"]["imagebuilder-build-key"] == "a" * 64


def test_retention_prunes_through_this_store(store: AzureImageStore, arm: AzureComputeStandin, qcow2: Path) -> None:
    from imagebuilder.clouds import utcnow
    from imagebuilder.config import RetentionPolicy
    from imagebuilder.retention import Action, apply, decide, gather

    for stamp, key in (("20231114221320", "a"), ("20240309160000", "b"), ("20240703094640", "c")):
        store.publish(local_artifact(qcow2, metadata(stamp, key)))
    new, used, old = store.list_images()
    arm.machines = [{"id": "/vm/a", "name": "node", "location": "westeurope",
                     "properties": {"storageProfile": {"imageReference": {"id": used.image_id}}}}]
    policy = RetentionPolicy(keep_newest=1, min_age_days=0, deprecate_grace_days=0)

    def run() -> dict[str, Action]:
        later = utcnow() + timedelta(seconds=1)
        inventory = gather(store)
        decisions = decide(inventory.records, inventory.in_use, policy, now=later,
                           unknown_reasons=inventory.unknown_reasons)
        assert all(o.error is None for o in apply(decisions, store, now=later))
        return {d.record.extra["version"]: d.action for d in decisions}

    assert run() == {"1.31.2369386": Action.KEEP, "1.31.2202720": Action.KEEP,
                     "1.31.2036053": Action.DEPRECATE}
    profile = arm.resource(old.image_id)["properties"]["publishingProfile"]
    assert profile["excludeFromLatest"] is True and profile["endOfLifeDate"]
    time.sleep(1.1)
    assert run()["1.31.2036053"] == Action.DELETE
    assert arm.resource(old.image_id) is None and len(arm.versions()) == 2
