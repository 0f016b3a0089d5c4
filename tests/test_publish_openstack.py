"""Publishing to OpenStack against a real Glance (gunicorn, sqlite, file store, no auth) over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openstack
import pytest
from click.testing import CliRunner
from services import (  # noqa: F401,F811 (fixtures)
    aws_env,
    glance_url,
    moto_url,
    openstack_env,
    qcow2_file,
    sample_metadata,
)

from imagebuilder.artifact import Artifact
from imagebuilder.clouds import CloudError, ImageFilter, newest, store_for
from imagebuilder.cli.images import images
from imagebuilder.clouds.openstack.settings import OpenstackSettings
from imagebuilder.clouds.openstack.store import STATUS_CODE_RETRIES, OpenstackImageStore
from imagebuilder.publishing import publish_artifact
from imagebuilder.errors import UserError


def qcow2_artifact(tmp_path: Path, key: str = "a", timestamp: str = "1764064800", minor: str = "1.31",
                   cloud: str = "qemu") -> Artifact:
    version = f"v{minor}.4"
    cell = f"{cloud}-debian-12-k8s-{minor}"
    image = qcow2_file(tmp_path / key / f"debian-12-kube-{version}.qcow2", "8M")
    metadata = sample_metadata(build_key=key * 64, cell=cell, kubernetes_version=version, kubernetes_minor=minor,
                               build_timestamp=timestamp)
    return Artifact(cell_id=cell, cloud=cloud, build_key=key * 64, image_name=f"debian-12-kube-{version}-{timestamp}",
                    metadata=metadata, ids={"default": str(image)}, files=[str(image)])


def glance_images(url: str) -> list[dict[str, Any]]:
    """Every image, hidden ones too, straight from Glance's REST API."""
    from urllib.request import urlopen

    found: list[dict[str, Any]] = []
    for query in ("", "&os_hidden=true"):
        with urlopen(f"{url}/v2/images?limit=1000&visibility=all{query}", timeout=10) as answer:
            found += json.load(answer)["images"]
    return found


def store(**settings: Any) -> OpenstackImageStore:
    return store_for("openstack", OpenstackSettings(**settings))  # type: ignore[return-value]


def test_publish_uploads_the_qcow2_with_properties_private(openstack_env: str, tmp_path: Path) -> None:
    artifact = qcow2_artifact(tmp_path, cloud="openstack")
    ids = publish_artifact(artifact, {"max_parallel": 4, "flavor": "m1.medium"})
    (image_id,) = ids.values()
    (image,) = glance_images(openstack_env)
    assert image["id"] == image_id and image["status"] == "active" and image["visibility"] == "private"
    assert image["disk_format"] == "qcow2" and image["size"] == Path(artifact.files[0]).stat().st_size
    assert image["tags"] == ["imagebuilder"]
    assert {key: image[key] for key in artifact.metadata.to_tags()} == artifact.metadata.to_tags()
    assert (image["os_distro"], image["os_version"], image["os_type"], image["architecture"]) == (
        "debian", "12", "linux", "x86_64")
    assert image["hw_disk_bus"] == "scsi" and image["hw_qemu_guest_agent"] == "yes"
    (record,) = store().list_images()
    assert record.metadata == artifact.metadata and record.state == "active" and record.image_id == image_id


def test_the_sbom_digest_is_an_image_property_and_sbom_says_where_the_document_is(
        openstack_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Glance keeps properties of up to 255 characters, no documents: the SBOM's sha256 is a property,
    and `images sbom` says in one line that the document is not kept in OpenStack."""
    from dataclasses import replace

    from test_sbom import run_cli

    from imagebuilder import attest
    from imagebuilder.clouds.local import CATALOGUE_ENV, LocalCatalogue

    built = qcow2_artifact(tmp_path, cloud="openstack")
    artifact = replace(built, metadata=replace(built.metadata, sbom_sha256="e" * 64))
    (image_id,) = publish_artifact(artifact, {}).values()
    (image,) = glance_images(openstack_env)
    assert image["imagebuilder-sbom-sha256"] == "e" * 64
    (record,) = store().list_images()
    assert record.metadata is not None and record.metadata.sbom_sha256 == "e" * 64
    monkeypatch.setenv(CATALOGUE_ENV, str(tmp_path / "catalogue"))
    monkeypatch.setattr(attest, "stores_to_ask", lambda target, declared: [LocalCatalogue(), store()])
    code, out, err = run_cli(monkeypatch, capsys, "images", "sbom", image_id)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"openstack keeps no SBOM document beside its images yet, only its sha256 {'e' * 64}" in err


def test_republishing_finds_the_image_by_build_key(openstack_env: str, tmp_path: Path) -> None:
    artifact = qcow2_artifact(tmp_path)
    first = store().publish(artifact)
    updated_at = glance_images(openstack_env)[0]["updated_at"]
    assert store().publish(artifact) == first
    (image,) = glance_images(openstack_env)
    assert image["updated_at"] == updated_at  # nothing to change, nothing changed


def test_a_broken_leftover_upload_is_replaced_not_kept(openstack_env: str, tmp_path: Path) -> None:
    artifact = qcow2_artifact(tmp_path)
    conn = openstack.connect()
    leftover = conn.image.create_image(name=artifact.image_name, disk_format="qcow2", container_format="bare",
                                       tags=["imagebuilder"], allow_duplicates=True,
                                       **artifact.metadata.to_tags())  # no data: stays 'queued'
    assert conn.image.get_image(leftover.id).status == "queued"
    (image_id,) = store().publish(artifact).values()
    assert image_id != leftover.id
    assert [(i["id"], i["status"]) for i in glance_images(openstack_env)] == [(image_id, "active")]


def test_of_two_uploads_of_one_build_the_older_is_used(openstack_env: str, tmp_path: Path) -> None:
    """Two publishers raced: both images are active; every later publish settles on the first."""
    artifact = qcow2_artifact(tmp_path)
    conn = openstack.connect()
    uploads = [conn.image.create_image(name=artifact.image_name, filename=artifact.files[0], disk_format="qcow2",
                                       container_format="bare", tags=["imagebuilder"], allow_duplicates=True,
                                       wait=True, **artifact.metadata.to_tags()) for _ in range(2)]
    first = min(uploads, key=lambda image: (conn.image.get_image(image.id).created_at, image.id))
    assert store().publish(artifact) == {"default": first.id}
    assert store().publish(artifact) == {"default": first.id}
    assert len(glance_images(openstack_env)) == 2  # the duplicate is retention's to remove, not publish's


def test_an_image_made_by_the_openstack_builder_is_completed_in_place(openstack_env: str, tmp_path: Path) -> None:
    conn = openstack.connect()
    built = conn.image.create_image(name="debian-12-kube-v1.31.4-1764064800", filename=str(
        qcow2_file(tmp_path / "built.qcow2")), disk_format="qcow2", container_format="bare", wait=True,
        allow_duplicates=True)
    metadata = sample_metadata(cell="openstack-debian-12-k8s-1.31")
    artifact = Artifact(cell_id=metadata.cell, cloud="openstack", build_key=metadata.build_key,
                        image_name=built.name, metadata=metadata, ids={"default": built.id})
    assert list(store().publish(artifact).values()) == [built.id]
    (image,) = glance_images(openstack_env)
    assert image["imagebuilder-build-key"] == metadata.build_key and image["os_distro"] == "debian"
    assert image["tags"] == ["imagebuilder"]
    assert [r.image_id for r in store().find_by_build_key(metadata.build_key)] == [built.id]


def test_visibility_from_the_settings_and_sharing_with_projects(openstack_env: str, tmp_path: Path) -> None:
    artifact = qcow2_artifact(tmp_path)
    (image_id,) = store(visibility="community").publish(artifact).values()
    assert glance_images(openstack_env)[0]["visibility"] == "community"
    record = store().get(image_id)
    store().share(record, ["project-a", "project-b"])
    conn = openstack.connect()
    assert sorted(m.member_id for m in conn.image.members(image_id)) == ["project-a", "project-b"]
    assert conn.image.get_image(image_id).visibility == "shared"
    store().share(store().get(image_id), ["project-b"])
    assert [m.member_id for m in conn.image.members(image_id)] == ["project-b"]
    with pytest.raises(CloudError, match=r"update of .* was denied \(HTTP 403\) \| fix"):
        store().share(store().get(image_id), public=True)  # Glance's publicize_image policy: admins only
    assert conn.image.get_image(image_id).visibility == "shared"
    store().publish(artifact)  # the matrix says private (the default): publish puts it back
    assert conn.image.get_image(image_id).visibility == "private"


def test_deprecated_images_are_hidden_and_not_resolved(openstack_env: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    old = store().publish(qcow2_artifact(tmp_path, key="b", timestamp="1700000000"))
    new = store().publish(qcow2_artifact(tmp_path, key="c", timestamp="1760000000"))
    store().publish(qcow2_artifact(tmp_path, key="d", minor="1.32"))
    monkeypatch.chdir(tmp_path)  # no matrix: the OS_* variables say where Glance is
    runner = CliRunner()

    def run(*args: str) -> str:
        return runner.invoke(images, list(args), standalone_mode=False, catch_exceptions=False).output

    resolve = ["resolve", "--cloud", "openstack", "--os", "debian-12", "--k8s", "1.31"]
    assert run(*resolve).strip() == new["default"]
    store().deprecate(store().get(new["default"]), datetime.now(timezone.utc) - timedelta(seconds=1))
    assert new["default"] not in [i["id"] for i in _default_listing(openstack_env)]  # os_hidden
    records = store().list_images(ImageFilter(kubernetes_minor="1.31"))
    assert {r.image_id: r.deprecated() for r in records} == {new["default"]: True, old["default"]: False}
    assert newest(records).image_id == old["default"]  # type: ignore[union-attr]
    assert run(*resolve).strip() == old["default"]
    listed = json.loads(run("list", "--cloud", "openstack", "--output", "json"))
    assert len(listed) == 3 and {e["kubernetes_minor"] for e in listed} == {"1.31", "1.32"}
    future = datetime.now(timezone.utc) + timedelta(days=7)
    store().deprecate(store().get(old["default"]), future)
    assert store().get(old["default"]).deprecated_at == future.replace(microsecond=future.microsecond)
    assert run(*resolve).strip() == old["default"]  # not yet


def _default_listing(url: str) -> list[dict[str, Any]]:
    from urllib.request import urlopen

    with urlopen(f"{url}/v2/images", timeout=10) as answer:
        return json.load(answer)["images"]


def test_delete_and_protected_images(openstack_env: str, tmp_path: Path) -> None:
    first = store().publish(qcow2_artifact(tmp_path, key="b"))["default"]
    second = store().publish(qcow2_artifact(tmp_path, key="c"))["default"]
    assert store().delete(store().get(first)) == [first]
    assert [i["id"] for i in glance_images(openstack_env)] == [second]
    openstack.connect().image.update_image(second, is_protected=True)
    with pytest.raises(CloudError, match="is protected | fix"):
        store().delete(store().get(second))
    with pytest.raises(CloudError, match="not found or vanished"):
        store().get(first)


def test_images_list_finds_every_cloud_of_the_matrix(openstack_env: str, aws_env: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/data/matrix.yaml declares qemu, aws and openstack: one listing shows all three."""
    import boto3

    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    local_id = publish_artifact(qcow2_artifact(tmp_path, key="b"))["local"]
    openstack_id = publish_artifact(qcow2_artifact(tmp_path, key="c", cloud="openstack"))["default"]
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    snapshot = ec2.create_snapshot(VolumeId=ec2.create_volume(AvailabilityZone="eu-west-1a", Size=8)["VolumeId"])
    ami = ec2.register_image(Name="capa-ami-debian-12-v1.31.4-1", RootDeviceName="/dev/xvda", BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot["SnapshotId"]}}])["ImageId"]
    ec2.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in sample_metadata(
        build_key="d" * 64, cell="aws-debian-12-k8s-1.31").to_tags().items()])
    monkeypatch.chdir(Path(__file__).parent / "data")
    result = CliRunner().invoke(images, ["list", "--output", "json"], standalone_mode=False, catch_exceptions=False)
    listed = {(entry["cloud"], entry["region"], entry["image_id"]) for entry in json.loads(result.output)}
    assert listed == {("local", "local", local_id), ("openstack", "default", openstack_id), ("aws", "eu-west-1", ami)}


def test_without_nova_in_use_cannot_tell(openstack_env: str, tmp_path: Path) -> None:
    image_id = store().publish(qcow2_artifact(tmp_path))["default"]
    assert store().in_use(store().get(image_id)) is None


class _Unavailable(BaseHTTPRequestHandler):
    """Glance's version document, then 503 for every API request (counted): an overloaded endpoint."""

    def log_message(self, *args: object) -> None:
        return

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/":
            host, port = self.server.server_address[:2]
            body = json.dumps({"versions": [{"id": "v2.16", "status": "CURRENT", "links": [
                {"rel": "self", "href": f"http://{host}:{port}/v2/"}]}]}).encode()
            self.send_response(300)
        else:
            self.server.requests += 1  # type: ignore[attr-defined]
            body = b'{"message": "The server is currently unavailable."}'
            self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


@pytest.fixture
def unavailable_glance(openstack_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    server.requests = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OS_IMAGE_ENDPOINT_OVERRIDE", f"http://127.0.0.1:{server.server_address[1]}/")
    yield server
    server.shutdown()
    server.server_close()


def test_a_503_is_retried_then_a_one_line_error(unavailable_glance: ThreadingHTTPServer, tmp_path: Path) -> None:
    impatient = OpenstackImageStore(OpenstackSettings(), status_code_retries=1, connect_retries=0)
    with pytest.raises(CloudError) as caught:
        impatient.publish(qcow2_artifact(tmp_path))
    message = str(caught.value)
    assert message.startswith("openstack default: image listing failed") and "503" in message and "\n" not in message
    assert unavailable_glance.requests == 2  # the listing, and its one retry
    assert STATUS_CODE_RETRIES >= 1  # production retries too


def test_an_unreachable_glance_is_a_user_error(openstack_env: str, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("OS_IMAGE_ENDPOINT_OVERRIDE", "http://127.0.0.1:9/")
    impatient = OpenstackImageStore(OpenstackSettings(), status_code_retries=0, connect_retries=0)
    with pytest.raises(UserError, match="openstack default: image listing failed: .* | fix: check that the image"):
        impatient.list_images()
