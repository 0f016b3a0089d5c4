"""Publish to GCP through the real google-cloud-compute and google-cloud-storage SDKs.

Compute Engine has no emulator: tests/standins/gcp_compute.py serves the images and global
operations REST paths the SDK really calls, and records what it sent. GCS is the
gcp-storage-emulator package from PyPI (a real server speaking the JSON and upload APIs).
"""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

pytest.importorskip("google.cloud.compute_v1")
gcs_emulator = pytest.importorskip("gcp_storage_emulator.server")

from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import storage  # noqa: E402

from imagebuilder.artifact import Artifact  # noqa: E402
from imagebuilder.clouds import CloudError, ImageFilter, store_for  # noqa: E402
from imagebuilder.clouds.gcp.store import (  # noqa: E402
    GcpImageStore,
    describe,
    image_family,
    image_name_for,
    metadata_of,
)
from imagebuilder.clouds.gcp.settings import GcpSettings  # noqa: E402
from imagebuilder.metadata import ImageMetadata  # noqa: E402
from standins.gcp_compute import GcpComputeStandin  # noqa: E402

PROJECT = "capi-images"
BUCKET = "imagebuilder-uploads"
FAMILY = "capi-debian-12-k8s-1-31"
IMAGES = f"/compute/v1/projects/{PROJECT}/global/images"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def gcs() -> Iterator[str]:
    port = free_port()
    server = gcs_emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def compute(gcs: str) -> Iterator[GcpComputeStandin]:
    def read_source(url: str) -> bytes:
        prefix = "https://storage.googleapis.com/"
        assert url.startswith(prefix), url
        bucket, _, name = url.removeprefix(prefix).partition("/")
        answer = requests.get(f"{gcs}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media",
                              timeout=30)
        if answer.status_code != 200:
            raise OSError(f"{url}: HTTP {answer.status_code}")
        return answer.content

    server = GcpComputeStandin(read_source=read_source)
    server.start()
    yield server
    server.stop()


def make_store(compute: GcpComputeStandin, gcs: str, **options: object) -> GcpImageStore:
    return GcpImageStore(GcpSettings(project_id=PROJECT), credentials=AnonymousCredentials(),
                         api_endpoint=compute.base_url, storage_endpoint=gcs, bucket=BUCKET, backoff=0.0,
                         poll_interval=0.0, **options)


@pytest.fixture()
def store(compute: GcpComputeStandin, gcs: str) -> GcpImageStore:
    return make_store(compute, gcs)


def metadata(timestamp: str, key_char: str = "a", arch: str = "amd64") -> ImageMetadata:
    return ImageMetadata(os="debian-12", os_version="12", kubernetes_version="v1.31.4", kubernetes_minor="1.31",
                         arch=arch, build_key=key_char * 64, cell="qemu-debian-12-k8s-1.31", version="0.1.0",
                         git_commit="0123abc", build_timestamp=timestamp)


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small qcow2 disk with known bytes at its start."""
    work = tmp_path_factory.mktemp("disk")
    raw = work / "seed.raw"
    raw.write_bytes(b"IMAGEBUILDER-DISK" + bytes(3 * 1024 * 1024 - 17))
    disk = work / "node.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], check=True)
    return disk


def local_artifact(disk: Path, meta: ImageMetadata) -> Artifact:
    return Artifact(cell_id=meta.cell, cloud="qemu", build_key=meta.build_key,
                    image_name=f"debian-12-kube-v1.31.4-{meta.build_timestamp}", metadata=meta,
                    ids={"local": str(disk)}, files=[str(disk)])


def test_local_disk_is_uploaded_and_imported_with_labels_family_and_description(
        store: GcpImageStore, compute: GcpComputeStandin, gcs: str, qcow2: Path) -> None:
    meta = metadata("1764064800")
    ids = store.publish(local_artifact(qcow2, meta))

    name = image_name_for(meta)
    assert ids == {"global": name}
    assert name == "cluster-api-debian-12-v1-31-4-1764064800"
    (insert,) = compute.calls("POST", f"^{IMAGES}$")
    body = insert.body
    assert body["rawDisk"] == {"source": f"https://storage.googleapis.com/{BUCKET}/imagebuilder/{name}.tar.gz"}
    assert body["family"] == FAMILY
    assert body["labels"]["imagebuilder-kubernetes-version"] == "v1-31-4"
    assert body["labels"]["imagebuilder-kubernetes-minor"] == "1-31"
    assert body["labels"]["imagebuilder-build-key"] == "a" * 63  # label values hold 63 characters
    assert body["architecture"] == "X86_64"
    assert body["storageLocations"] == ["us"]
    assert insert.query["requestId"]
    assert compute.calls("POST", r"/global/operations/operation-\d+/wait")  # the SDK waited on the operation

    image = compute.images[(PROJECT, name)]
    assert image["status"] == "READY"
    assert image["diskSizeGb"] == "1"  # the 3 MiB disk, raised to a whole GiB as GCE requires
    # the upload went away once the image held the disk
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs})
    assert client.bucket(BUCKET).get_blob(f"imagebuilder/{name}.tar.gz") is None

    (record,) = store.find_by_build_key(meta.build_key)
    assert record.metadata == meta  # whole values come back from the description, not the lossy labels
    assert record.state == "available" and record.region == "global" and record.image_id == name
    assert [r.image_id for r in store.list_images(ImageFilter(kubernetes_minor="1.31", os="debian-12"))] == [name]
    assert store.list_images(ImageFilter(kubernetes_minor="1.30")) == []
    listing = compute.calls("GET", f"^{IMAGES}$")[-1]
    assert '(labels.imagebuilder-kubernetes-minor = "1-30")' in listing.query["filter"]


def test_the_tarball_holds_a_sparse_whole_gib_disk_raw(store: GcpImageStore, compute: GcpComputeStandin,
                                                        qcow2: Path) -> None:
    seen: list[bytes] = []
    reader = compute.read_source
    assert reader is not None

    def keep(url: str) -> bytes:
        seen.append(reader(url))
        return seen[-1]

    compute.read_source = keep
    store.publish(local_artifact(qcow2, metadata("1764064801")))
    with tarfile.open(fileobj=io.BytesIO(seen[0]), mode="r:gz") as archive:
        (member,) = archive.getmembers()
        assert member.name == "disk.raw" and member.size == 1 << 30
        head = archive.extractfile(member).read(17)  # type: ignore[union-attr]
    assert head == b"IMAGEBUILDER-DISK"
    assert len(seen[0]) < 1024 * 1024  # sparse and gzipped, not a GiB of zeros


def test_publishing_again_finds_the_image_and_uploads_nothing(store: GcpImageStore, compute: GcpComputeStandin,
                                                              qcow2: Path) -> None:
    artifact = local_artifact(qcow2, metadata("1764064800"))
    first = store.publish(artifact)
    second = make_store(compute, store._storage_endpoint or "").publish(artifact)
    assert first == second
    assert len(compute.calls("POST", f"^{IMAGES}$")) == 1
    assert len(compute.images) == 1


def test_new_image_deprecates_older_ones_in_the_family(store: GcpImageStore, compute: GcpComputeStandin,
                                                       qcow2: Path) -> None:
    old = store.publish(local_artifact(qcow2, metadata("1700000000", "a")))["global"]
    new = store.publish(local_artifact(qcow2, metadata("1764064800", "b")))["global"]
    new_link = compute.images[(PROJECT, new)]["selfLink"]
    assert compute.images[(PROJECT, old)]["deprecated"]["state"] == "DEPRECATED"
    assert compute.images[(PROJECT, old)]["deprecated"]["replacement"] == new_link
    assert "deprecated" not in compute.images[(PROJECT, new)]
    head = requests.get(f"{compute.base_url}{IMAGES}/family/{FAMILY}", timeout=10).json()
    assert head["name"] == new

    # an older build published late does not take the family over: it is deprecated at once
    late = store.publish(local_artifact(qcow2, metadata("1730000000", "c")))["global"]
    assert compute.images[(PROJECT, late)]["deprecated"]["replacement"] == new_link
    assert "deprecated" not in compute.images[(PROJECT, new)]
    records = {r.image_id: r for r in store.list_images()}
    assert records[old].deprecated() and records[late].deprecated() and not records[new].deprecated()
    assert [r.image_id for r in store.list_images()] == [new, late, old]  # newest build first


def test_other_architectures_keep_their_own_image(store: GcpImageStore, compute: GcpComputeStandin,
                                                  qcow2: Path) -> None:
    arm = store.publish(local_artifact(qcow2, metadata("1700000000", "a", arch="arm64")))["global"]
    store.publish(local_artifact(qcow2, metadata("1764064800", "b")))
    assert "deprecated" not in compute.images[(PROJECT, arm)]
    assert compute.images[(PROJECT, arm)]["architecture"] == "ARM64"


def test_a_packer_built_image_is_labelled_described_and_put_in_its_family(
        store: GcpImageStore, compute: GcpComputeStandin) -> None:
    meta = metadata("1764064800")
    name = "cluster-api-debian-12-v1-31-4-1764064800"
    compute.images[(PROJECT, name)] = {
        "kind": "compute#image", "id": "77", "name": name, "status": "READY",
        "creationTimestamp": "2026-11-25T10:00:00.000+00:00", "selfLink": compute.link(PROJECT, "images", name),
        "labels": {"packer": "yes"}, "labelFingerprint": "fp0", "family": "",
        "description": "Kubernetes v1.31.4 node, imagebuilder build key " + meta.build_key,
    }
    artifact = Artifact(cell_id="gcp-debian-12-k8s-1.31", cloud="gcp", build_key=meta.build_key, image_name=name,
                        metadata=meta, ids={"default": name})
    assert store.publish(artifact) == {"global": name}

    set_labels, published = compute.calls("POST", f"{IMAGES}/{name}/setLabels")  # the published label last
    assert published.body["labels"]["imagebuilder-published"] == "true"
    assert "imagebuilder-published" not in set_labels.body["labels"]
    assert set_labels.body["labelFingerprint"] == "fp0"
    assert set_labels.body["labels"]["packer"] == "yes"  # labels Packer set stay
    assert set_labels.body["labels"]["imagebuilder-os"] == "debian-12"
    (patch,) = compute.calls("PATCH", f"{IMAGES}/{name}$")
    assert patch.body["family"] == FAMILY
    assert metadata_of(compute.images[(PROJECT, name)]["labels"], patch.body["description"]) == meta
    assert compute.images[(PROJECT, name)]["description"] == describe(meta)
    store.publish(artifact)  # nothing left to change
    assert len(compute.calls("POST", "/setLabels")) == 2 and len(compute.calls("PATCH")) == 1


def test_the_sbom_digest_fits_gce_labels_and_comes_back_whole(store: GcpImageStore, compute: GcpComputeStandin) -> None:
    """A sha256 is 64 hex digits, a label value 63 characters: two labels, joined again on reading,
    and whole in the description (the stand-in refuses a 64-character value, on insert and setLabels, as GCE does)."""
    digest = "0123456789abcdef" * 4
    meta = replace(metadata("1764064800"), sbom_sha256=digest)
    labels = meta.to_gcp_labels()
    assert (labels["imagebuilder-sbom-sha256"], labels["imagebuilder-sbom-sha256-2"]) == (digest[:32], digest[32:])
    assert ImageMetadata.from_gcp_labels(labels).sbom_sha256 == digest  # the other values label-safe, as before
    name = "cluster-api-debian-12-v1-31-4-1764064800"
    compute.images[(PROJECT, name)] = {
        "kind": "compute#image", "id": "78", "name": name, "status": "READY",
        "creationTimestamp": "2026-11-25T10:00:00.000+00:00", "selfLink": compute.link(PROJECT, "images", name),
        "labels": {}, "labelFingerprint": "fp0", "family": "", "description": "",
    }
    store.publish(Artifact(cell_id="gcp-debian-12-k8s-1.31", cloud="gcp", build_key=meta.build_key, image_name=name,
                           metadata=meta, ids={"default": name}))
    (record,) = store.find_by_build_key(meta.build_key)
    assert record.metadata is not None and record.metadata.sbom_sha256 == digest  # from the description
    assert ImageMetadata.from_gcp_labels(record.tags).sbom_sha256 == digest  # from the labels alone
    for call in compute.calls("POST", "/setLabels"):  # what was sent, each value as GCE takes it
        assert all(len(value) <= 63 for value in call.body["labels"].values())


def test_a_missing_packer_image_is_a_clear_error(store: GcpImageStore) -> None:
    meta = metadata("1764064800")
    artifact = Artifact(cell_id="gcp-debian-12-k8s-1.31", cloud="gcp", build_key=meta.build_key,
                        image_name="gone", metadata=meta, ids={"default": "gone"})
    with pytest.raises(CloudError, match="image gone does not exist"):
        store.publish(artifact)


def test_429_on_insert_is_retried_with_the_same_request_id_and_no_duplicate(
        store: GcpImageStore, compute: GcpComputeStandin, qcow2: Path) -> None:
    compute.fail("POST", f"^{IMAGES}$", 429, {"error": {"code": 429, "message": "Rate Limit Exceeded",
                                                        "errors": [{"reason": "rateLimitExceeded"}]}}, times=2)
    store.publish(local_artifact(qcow2, metadata("1764064800")))
    inserts = compute.calls("POST", f"^{IMAGES}$")
    assert len(inserts) == 3
    assert len({call.query["requestId"] for call in inserts}) == 1
    assert len(compute.images) == 1


def test_a_lost_insert_answer_does_not_duplicate_the_image(store: GcpImageStore, compute: GcpComputeStandin,
                                                           qcow2: Path) -> None:
    """The insert reached GCE but its answer was a 503: the retry carries the same requestId."""
    original = compute.insert

    def insert_then_fail(request, match):  # type: ignore[no-untyped-def]
        response = original(request, match)
        if len(compute.calls("POST", f"^{IMAGES}$")) == 1:
            response.status, response.body = 503, {"error": {"code": 503, "message": "backend error"}}
        return response

    compute._routes = [(m, p, insert_then_fail if h == original else h) for m, p, h in compute._routes]
    store.publish(local_artifact(qcow2, metadata("1764064800")))
    assert len(compute.calls("POST", f"^{IMAGES}$")) == 2
    assert len(compute.images) == 1


def test_throttling_that_never_ends_is_a_bounded_clear_error(compute: GcpComputeStandin, gcs: str,
                                                             qcow2: Path) -> None:
    store = make_store(compute, gcs, max_attempts=3)
    compute.fail("POST", f"^{IMAGES}$", 429, {"error": {"code": 429, "message": "slow down"}}, times=99)
    with pytest.raises(CloudError, match="still throttled or unavailable after retries"):
        store.publish(local_artifact(qcow2, metadata("1764064800")))
    assert len(compute.calls("POST", f"^{IMAGES}$")) == 3
    assert compute.images == {}


def test_a_quota_error_is_clear_and_not_retried(store: GcpImageStore, compute: GcpComputeStandin,
                                                qcow2: Path) -> None:
    compute.fail("POST", f"^{IMAGES}$", 403, {"error": {"code": 403, "message": "Quota 'IMAGES' exceeded. Limit: 2000",
                                                        "errors": [{"reason": "quotaExceeded"}]}})
    with pytest.raises(CloudError, match=r"quota exceeded .*Quota 'IMAGES' exceeded.* \| fix: raise the quota"):
        store.publish(local_artifact(qcow2, metadata("1764064800")))
    assert len(compute.calls("POST", f"^{IMAGES}$")) == 1


def test_a_failed_operation_is_a_clear_error_and_a_rerun_replaces_the_failed_image(
        store: GcpImageStore, compute: GcpComputeStandin, qcow2: Path) -> None:
    compute.fail_next_operation.append({"code": "QUOTA_EXCEEDED", "http": 403, "keep_image": True,
                                        "message": "Quota 'SNAPSHOTS' exceeded in region us"})
    artifact = local_artifact(qcow2, metadata("1764064800"))
    with pytest.raises(CloudError, match="insert .* failed: quota exceeded"):
        store.publish(artifact)
    (failed,) = compute.images.values()
    assert failed["status"] == "FAILED"
    assert store.find_by_build_key(artifact.build_key) == []  # nothing launchable: the cell still needs a build
    assert store.publish(artifact) == {"global": failed["name"]}
    assert compute.calls("DELETE", f"{IMAGES}/{failed['name']}")
    (image,) = compute.images.values()
    assert image["status"] == "READY"


def test_a_disk_the_import_cannot_read_fails_the_operation(store: GcpImageStore, compute: GcpComputeStandin,
                                                           qcow2: Path) -> None:
    compute.read_source = lambda url: b"not a tarball"
    with pytest.raises(CloudError, match="INVALID_IMAGE_FILE"):
        store.publish(local_artifact(qcow2, metadata("1764064800")))
    assert compute.images == {}


def test_share_deprecate_tag_and_delete(store: GcpImageStore, compute: GcpComputeStandin, qcow2: Path) -> None:
    name = store.publish(local_artifact(qcow2, metadata("1764064800")))["global"]
    (record,) = store.list_images()
    store.share(record, ["user:ops@example.com", "group:capi@example.com"], public=False)
    policy = compute.policies[(PROJECT, name)]
    assert policy["bindings"] == [{"role": "roles/compute.imageUser",
                                   "members": ["group:capi@example.com", "user:ops@example.com"]}]
    store.share(record, ["user:ops@example.com", "group:capi@example.com"])
    assert len(compute.calls("POST", "/setIamPolicy")) == 1  # already as wanted
    with pytest.raises(CloudError, match="user:, group:"):
        store.share(record, ["12345"])

    store.tag(record, {"imagebuilder-protect": "true"})
    assert compute.images[(PROJECT, name)]["labels"]["imagebuilder-protect"] == "true"
    store.deprecate(record, record.created_at)
    (record,) = store.list_images()
    assert record.deprecated() and record.extra["deprecation_state"] == "DEPRECATED"
    assert store.copy_to_regions(record, ["europe-west4"]) == {"europe-west4": name}
    assert store.delete(record) == [name]
    assert compute.images == {} and store.list_images() == []


def test_listing_follows_pages_and_leaves_foreign_images_out(compute: GcpComputeStandin, gcs: str,
                                                            qcow2: Path) -> None:
    store = make_store(compute, gcs, page_size=1)
    for index, stamp in enumerate(("1700000000", "1710000000", "1720000000")):
        store.publish(local_artifact(qcow2, metadata(stamp, "abc"[index])))
    compute.images[(PROJECT, "someone-elses")] = {"name": "someone-elses", "status": "READY", "id": "1",
                                                  "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {}}
    assert len(store.list_images()) == 3
    assert len(store.list_images(ImageFilter(include_foreign=True))) == 4
    assert any(call.query.get("pageToken") for call in compute.calls("GET", f"^{IMAGES}$"))


def test_no_bucket_is_a_clear_error(compute: GcpComputeStandin, qcow2: Path) -> None:
    store = store_for("gcp", {"project_id": PROJECT, "zone": "europe-west4-a"}, credentials=AnonymousCredentials(),
                      api_endpoint=compute.base_url)
    assert isinstance(store, GcpImageStore) and store.project == PROJECT
    with pytest.raises(CloudError, match="no GCS bucket"):
        store.publish(local_artifact(qcow2, metadata("1764064800")))


def test_family_name_matches_what_render_writes() -> None:
    """One family per arch (and variant): a GCE family names one image, the newest."""
    assert image_family(metadata("1")) == FAMILY
    assert image_family(replace(metadata("1"), os="ubuntu-24.04", kubernetes_minor="1.35")) == "capi-ubuntu-24.04-k8s-1-35"
    assert image_family(metadata("1", arch="arm64")) == "capi-debian-12-arm64-k8s-1-31"
    assert image_family(replace(metadata("1"), variant="sev")) == "capi-debian-12-sev-k8s-1-31"


def test_in_use_finds_disks_and_instance_templates(store: GcpImageStore, compute: GcpComputeStandin,
                                                   qcow2: Path) -> None:
    used = store.publish(local_artifact(qcow2, metadata("1700000000", "a")))["global"]
    free = store.publish(local_artifact(qcow2, metadata("1764064800", "b")))["global"]
    base = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}"
    compute.disks = {
        "zones/us-central1-a": [{"name": "node-1", "sourceImage": f"{base}/global/images/{used}",
                                 "users": [f"{base}/zones/us-central1-a/instances/node-1"]}],
        "zones/europe-west4-b": [{"name": "other", "sourceImage": f"{base}/global/images/family/{FAMILY}"},
                                 {"name": "theirs", "sourceImage": f"https://www.googleapis.com/compute/v1/"
                                                                   f"projects/elsewhere/global/images/{free}"}],
    }
    compute.templates = {"global": [{"name": "workers", "properties": {"disks": [
        {"initializeParams": {"sourceImage": f"projects/{PROJECT}/global/images/{used}"}}]}}]}
    records = {r.image_id: r for r in store.list_images()}
    users = store.images_in_use(list(records.values()))
    assert users == {used: ["disk zones/us-central1-a/node-1 (instance node-1)", "instance template workers (global)"],
                     free: []}
    assert store.in_use(records[free]) == []


def test_a_concurrent_publish_of_the_same_build_is_adopted_and_a_stranger_is_refused(
        store: GcpImageStore, compute: GcpComputeStandin, qcow2: Path) -> None:
    meta = metadata("1764064800")
    name = image_name_for(meta)
    original = compute.insert

    def raced(request, match):  # type: ignore[no-untyped-def]
        """Another publisher of the same build inserted the image just before this request."""
        other = type(request)(request.method, request.path, {"requestId": "other"}, request.body, request.headers)
        original(other, match)
        for operation in list(compute.operations.values()):
            compute._finish(operation)
        return original(request, match)

    compute._routes = [(m, p, raced if h == original else h) for m, p, h in compute._routes]
    assert store.publish(local_artifact(qcow2, meta)) == {"global": name}
    assert len(compute.images) == 1

    assert len(compute.calls("POST", f"^{IMAGES}$")) == 1  # ours answered 409 alreadyExists: adopted, not retried
    compute._routes = [(m, p, original if h == raced else h) for m, p, h in compute._routes]
    compute.images[(PROJECT, name)]["labels"].pop("imagebuilder-build-key")  # now someone else's image
    with pytest.raises(CloudError, match=f"an image named {name} exists and is not build aaaaaaaaaaaa"):
        store.publish(local_artifact(qcow2, meta))


def test_a_delete_whose_answer_was_lost_is_retried_and_counts_as_done(
        store: GcpImageStore, compute: GcpComputeStandin, qcow2: Path) -> None:
    name = store.publish(local_artifact(qcow2, metadata("1764064800")))["global"]
    (record,) = store.list_images()
    original = compute.delete

    def delete_then_fail(request, match):  # type: ignore[no-untyped-def]
        """The first delete is carried out (its operation finishes) but answered with a 503."""
        response = original(request, match)
        if response.status == 200:
            for operation in list(compute.operations.values()):
                if operation.body["status"] != "DONE":
                    compute._finish(operation)
            response.status, response.body = 503, {"error": {"code": 503, "message": "backend error"}}
        return response

    compute._routes = [(m, p, delete_then_fail if h == original else h) for m, p, h in compute._routes]
    assert store.delete(record) == [name]
    assert len(compute.calls("DELETE", f"{IMAGES}/{name}")) >= 2
    assert compute.images == {}


def test_retention_prunes_through_this_store(store: GcpImageStore, compute: GcpComputeStandin, qcow2: Path) -> None:
    from datetime import timedelta

    from imagebuilder.clouds import utcnow
    from imagebuilder.config import RetentionPolicy
    from imagebuilder.retention import Action, apply, decide, gather

    old, used, new = (store.publish(local_artifact(qcow2, metadata(stamp, key)))["global"]
                      for stamp, key in (("20231114221320", "a"), ("20240309160000", "b"), ("20240703094640", "c")))
    compute.disks = {"zones/us-central1-a": [{"name": "node", "sourceImage": compute.link(PROJECT, "images", used)}]}
    policy = RetentionPolicy(keep_newest=1, min_age_days=0, deprecate_grace_days=0, obsolete_days=0)
    later = utcnow() + timedelta(seconds=1)
    inventory = gather(store)
    decisions = decide(inventory.records, inventory.in_use, policy, now=later,
                       unknown_reasons=inventory.unknown_reasons)
    actions = {d.record.image_id: d.action for d in decisions}
    # the family had already deprecated the older builds: the unused one is deleted at once
    assert actions == {new: Action.KEEP, used: Action.KEEP, old: Action.DELETE}
    outcomes = apply(decisions, store, now=later)
    assert [(o.subject, o.error) for o in outcomes] == [(old, None)]
    assert set(name for _, name in compute.images) == {new, used}


def test_retention_stages_deprecated_obsolete_then_delete(store: GcpImageStore, compute: GcpComputeStandin,
                                                         qcow2: Path) -> None:
    from datetime import datetime, timedelta

    from google.api_core import exceptions as gexc
    from google.cloud import compute_v1

    from imagebuilder.cli.prune import CloudRun, report
    from imagebuilder.clouds import utcnow
    from imagebuilder.config import RetentionPolicy
    from imagebuilder.retention import Action, apply, decide, gather

    old, older, new = (store.publish(local_artifact(qcow2, metadata(stamp, key)))["global"]
                       for stamp, key in (("20240309160000", "b"), ("20231114221320", "a"), ("20240703094640", "c")))
    deprecated_at = compute.images[(PROJECT, old)]["deprecated"]["deprecated"]  # publish deprecated the older builds
    policy = RetentionPolicy(keep_newest=1, min_age_days=0, deprecate_grace_days=1, obsolete_days=2)

    shown: list[str] = []

    def run(days: float) -> dict[str, tuple[Action, str]]:
        now = utcnow() + timedelta(days=days)
        inventory = gather(store)
        decisions = decide(inventory.records, inventory.in_use, policy, now=now)
        with contextlib.redirect_stdout(io.StringIO()) as table:
            report([CloudRun(inventory, decisions)], policy, False, "table")
        shown.append(table.getvalue().splitlines()[-1])
        assert all(o.error is None for o in apply(decisions, store, now=now))
        return {d.record.image_id: (d.action, d.reason) for d in decisions}

    assert run(0.5)[old][1].startswith("deprecated, grace until")
    first = run(1.5)  # grace over: OBSOLETE, not deleted
    assert shown[-1].startswith("3 images: 1 kept, 0 would deprecate, 2 would make obsolete, 0 would delete;")
    assert first[old][0] is Action.OBSOLETE and first[older][0] is Action.OBSOLETE and first[new][0] is Action.KEEP
    status = compute.images[(PROJECT, old)]["deprecated"]
    assert status["state"] == "OBSOLETE" and status["deprecated"] == deprecated_at  # the deprecation time kept
    assert status["replacement"] == compute.link(PROJECT, "images", new)
    obsolete_at = datetime.fromisoformat(status["obsolete"])
    assert datetime.fromisoformat(status["deleted"]) - obsolete_at == timedelta(days=2)  # informational, as GCE has it

    disks = store._client("disks")  # GCE refuses new uses of an OBSOLETE image, takes the current one
    with pytest.raises(gexc.BadRequest, match="obsolete"):
        disks.insert_unary(project=PROJECT, zone="us-central1-a", disk_resource=compute_v1.Disk(
            name="from-old", source_image=compute.link(PROJECT, "images", old)))
    disks.insert_unary(project=PROJECT, zone="us-central1-a", disk_resource=compute_v1.Disk(
        name="from-new", source_image=compute.link(PROJECT, "images", new)))

    assert run(2.5)[old] == (Action.KEEP, f"obsolete, delete after {obsolete_at + timedelta(days=2):%Y-%m-%d %H:%M}")
    assert (PROJECT, old) in compute.images
    last = run(4)
    assert last[old] == (Action.DELETE, f"obsolete since {obsolete_at:%Y-%m-%d}, grace over")
    assert set(name for _, name in compute.images) == {new}


def test_the_standin_refuses_what_gce_refuses_in_a_deprecation(store: GcpImageStore, compute: GcpComputeStandin,
                                                               qcow2: Path) -> None:
    from google.api_core import exceptions as gexc
    from google.cloud import compute_v1

    name = store.publish(local_artifact(qcow2, metadata("20240703094640")))["global"]
    for status in (compute_v1.DeprecationStatus(state="RETIRED"),
                   compute_v1.DeprecationStatus(state="OBSOLETE", obsolete="next tuesday")):
        with pytest.raises(gexc.BadRequest, match="Invalid value for field"):
            store.images.deprecate_unary(project=PROJECT, image=name, deprecation_status_resource=status)
    assert "deprecated" not in compute.images[(PROJECT, name)]


@pytest.mark.parametrize("value", [True, "7", -1, 36501, 2.5])
def test_obsolete_days_is_a_bounded_whole_number(value: object) -> None:
    from imagebuilder.config import RetentionPolicy

    with pytest.raises(ValueError, match="obsolete_days"):
        RetentionPolicy.model_validate({"obsolete_days": value})
    assert RetentionPolicy().obsolete_days == 7 and RetentionPolicy(obsolete_days=0).obsolete_days == 0
