"""`imagebuilder publish` and ImageStore.reconcile: existing images brought to what the matrix declares now.

AWS on moto over HTTP (a failing region copy through a small proxy that answers CopyImage
with EC2's own error), OpenStack on real Glance, GCP and Azure on their stand-ins, the local
catalogue on disk. Every scenario runs publish twice: the second run changes nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import yaml
from click.testing import CliRunner
from services import (  # noqa: F401,F811 (fixtures)
    aws_env,
    free_port,
    glance_url,
    moto_url,
    openstack_env,
    qcow2_file,
    sample_metadata,
)

from imagebuilder import baseimages
from imagebuilder.artifact import Artifact
from imagebuilder.cli import cli
from imagebuilder.clouds import CloudError, store_for
from imagebuilder.clouds.aws.store import AwsImageStore
from imagebuilder.clouds.local import LocalCatalogue
from imagebuilder.cli.images import images
from imagebuilder.clouds.aws.settings import AwsSettings
from imagebuilder.clouds.openstack.settings import OpenstackSettings
from imagebuilder.config import load_matrix
from imagebuilder.errors import UserError
from imagebuilder.metadata import PUBLISHED_TAG, metadata_for
from imagebuilder.planner import Cell, plan

pytest.importorskip("google.cloud.compute_v1")
pytest.importorskip("azure.mgmt.compute")
from imagebuilder.clouds.azure.store import AzureImageStore  # noqa: E402
from standins.azure_compute import AzureComputeStandin  # noqa: E402
from standins.azurite import Azurite  # noqa: E402
from standins.gcp_compute import GcpComputeStandin  # noqa: E402
from test_publish_azure import arm, azurite  # noqa: E402,F401,F811 (fixtures)
from test_publish_azure import make_store as azure_store  # noqa: E402
from test_publish_azure import metadata as azure_metadata  # noqa: E402
from test_publish_azure import packer_artifact as azure_packer_artifact  # noqa: E402
from test_publish_gcp import PROJECT as GCP_PROJECT  # noqa: E402
from test_publish_gcp import compute, gcs  # noqa: E402,F401,F811 (fixtures)
from test_publish_gcp import make_store as gcp_store  # noqa: E402
from test_publish_gcp import metadata as gcp_metadata  # noqa: E402

DATA = Path(__file__).parent / "data"
ACCOUNT = "111122223333"


# -- a matrix of one AWS cell, and what Packer's amazon-ebs leaves behind --------------------------


def write_matrix(directory: Path, aws: dict[str, Any]) -> Path:
    """debian-12 x 1.31 on AWS with these settings; the build key does not depend on where it is published."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / "versions.lock.yaml", directory / "versions.lock.yaml")
    path = directory / "matrix.yaml"
    path.write_text(yaml.safe_dump({"versions_file": "versions.lock.yaml", "os": ["debian-12"],
                                    "kubernetes": ["1.31"], "clouds": {"aws": aws}}))
    return path


def only_cell(matrix: Path) -> Cell:
    """The cell as `build` plans it: its base image resolved (moto serves the vendors' AMIs)."""
    loaded = load_matrix(matrix)
    (cell,) = baseimages.resolve_cells(plan(loaded), loaded, baseimages.Resolver())
    return cell


def amazon_ebs_image(cell: Cell, region: str = "us-east-1", timestamp: str = "20261125100000") -> Artifact:
    """An AMI registered from a snapshot, untagged, with the cell's build key in the artifact."""
    ec2 = boto3.client("ec2", region_name=region)
    volume = ec2.create_volume(AvailabilityZone=f"{region}a", Size=8)
    snapshot = ec2.create_snapshot(VolumeId=volume["VolumeId"])["SnapshotId"]
    name = f"{cell.image_name}-{timestamp}"
    image_id = ec2.register_image(
        Name=name, Architecture="x86_64", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}])["ImageId"]
    metadata = metadata_for(cell, "0.1.0", "0123abc")
    metadata = type(metadata)(**{**metadata.__dict__, "build_timestamp": timestamp})
    return Artifact(cell_id=cell.id, cloud="aws", build_key=cell.build_key, image_name=name, metadata=metadata,
                    ids={region: image_id})


def aws_store(settings: dict[str, Any]) -> AwsImageStore:
    return AwsImageStore(AwsSettings(**settings), boto3._get_default_session(), waiter_delay=1,
                         waiter_max_attempts=5, backoff=0.1, sleep=lambda _: None)


def ours(region: str) -> list[dict[str, Any]]:
    ec2 = boto3.client("ec2", region_name=region)
    return ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag-key", "Values": ["imagebuilder-build-key"]}]
                               )["Images"]


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def launch_permissions(region: str, image_id: str) -> list[dict[str, str]]:
    ec2 = boto3.client("ec2", region_name=region)
    return ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]


def run_cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the command; a UserError as cli.main reports it."""
    result = CliRunner().invoke(cli, list(args))
    if isinstance(result.exception, UserError):
        return result.exception.exit_code, result.stdout, f"imagebuilder: {result.exception}"
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# -- AWS ----------------------------------------------------------------------------------------------


def test_publish_reaches_a_new_region_and_account_and_a_second_run_changes_nothing(
        aws_env: str, tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, {"regions": ["us-east-1"]})
    cell = only_cell(matrix)
    artifact = amazon_ebs_image(cell)
    aws_store(cell.settings).publish(artifact)
    assert run_cli("publish", "-m", str(matrix)) == (0, "", "")  # all in place already

    write_matrix(tmp_path, {"regions": ["us-east-1", "eu-west-1"], "ami_users": [ACCOUNT]})
    assert only_cell(matrix).build_key == cell.build_key  # where and with whom: outside the build key
    code, out, _ = run_cli("publish", "-m", str(matrix))
    assert code == 0
    (copy,) = ours("eu-west-1")
    source = artifact.ids["us-east-1"]
    lines = out.splitlines()
    assert f"aws eu-west-1 {copy['ImageId']}: copied from us-east-1 {source}" in lines
    assert f"aws us-east-1 {source}: launch permissions +user {ACCOUNT}" in lines
    assert f"aws eu-west-1 {copy['ImageId']}: launch permissions +user {ACCOUNT}" in lines
    assert lines[-1] == f"aws eu-west-1 {copy['ImageId']}: tagged {PUBLISHED_TAG}"  # the published tag last
    assert tags_of(copy)[PUBLISHED_TAG] == "true" and tags_of(copy)["Name"] == artifact.image_name
    assert tags_of(copy)["imagebuilder-build-key"] == cell.build_key
    for region, image_id in (("us-east-1", source), ("eu-west-1", copy["ImageId"])):
        assert launch_permissions(region, image_id) == [{"UserId": ACCOUNT}]
    snapshot = copy["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    (snap,) = boto3.client("ec2", region_name="eu-west-1").describe_snapshots(SnapshotIds=[snapshot])["Snapshots"]
    assert tags_of(snap)["imagebuilder-build-key"] == cell.build_key

    assert run_cli("publish", "-m", str(matrix)) == (0, "", "")  # the second run changes nothing
    assert len(ours("eu-west-1")) == 1

    write_matrix(tmp_path, {"regions": ["us-east-1", "eu-west-1"], "ami_users": []})
    code, out, _ = run_cli("publish", "-m", str(matrix))
    lines = out.splitlines()
    assert f"aws us-east-1 {source}: launch permissions -user {ACCOUNT}" in lines
    assert f"aws eu-west-1 {copy['ImageId']}: launch permissions -user {ACCOUNT}" in lines
    assert f"aws eu-west-1 {snapshot}: create volume permission remove {ACCOUNT}" in lines and len(lines) == 4
    assert launch_permissions("eu-west-1", copy["ImageId"]) == []


def test_dry_run_prints_the_changes_and_makes_none(aws_env: str, tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, {"regions": ["us-east-1"]})
    cell = only_cell(matrix)
    artifact = amazon_ebs_image(cell)
    aws_store(cell.settings).publish(artifact)
    write_matrix(tmp_path, {"regions": ["us-east-1", "ap-southeast-2"], "ami_groups": ["all"],
                            "ssm_parameter_prefix": "/imagebuilder"})
    code, out, _ = run_cli("publish", "-m", str(matrix), "--dry-run")
    source = artifact.ids["us-east-1"]
    assert code == 0
    assert out.splitlines() == [
        f"would: aws ap-southeast-2 {artifact.image_name}: copy from us-east-1 {source}",
        f"would: aws us-east-1 {source}: launch permissions +group all",
        f"would: aws us-east-1 ssm /imagebuilder/debian-12/1.31/amd64: {source}",
    ]
    assert ours("ap-southeast-2") == [] and launch_permissions("us-east-1", source) == []
    code, out, _ = run_cli("publish", "-m", str(matrix))
    (copy,) = ours("ap-southeast-2")
    copy_id = copy["ImageId"]
    assert out.splitlines()[0] == f"aws ap-southeast-2 {copy_id}: copied from us-east-1 {source}"
    assert f"aws ap-southeast-2 ssm /imagebuilder/debian-12/1.31/amd64: {copy_id}" in out
    assert out.splitlines()[-1] == f"aws ap-southeast-2 {copy_id}: tagged {PUBLISHED_TAG}"
    assert launch_permissions("ap-southeast-2", copy_id) == [{"Group": "all"}]
    assert run_cli("publish", "-m", str(matrix), "--dry-run") == (0, "", "")


class FailingCopies:
    """A proxy in front of moto that answers CopyImage with EC2's error while `failing` is set."""

    ERROR = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>ResourceLimitExceeded"
             "</Code><Message>You have reached the limit of concurrent AMI copies</Message></Error></Errors>"
             "<RequestID>imagebuilder-test</RequestID></Response>")

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.failing = True
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.failing and parse_qs(body.decode(errors="replace")).get("Action") == ["CopyImage"]:
                    proxy.refused += 1
                    return self._answer(400, proxy.ERROR.encode(), "text/xml")
                connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                connection.request("POST", self.path, body=body, headers=headers)
                answer = connection.getresponse()
                self._answer(answer.status, answer.read(), answer.getheader("Content-Type", "text/xml"))
                connection.close()

            def _answer(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FailingCopies:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def failing_copies(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FailingCopies]:
    with FailingCopies(aws_env) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


def test_a_failed_region_copy_leaves_no_published_tag_and_publish_completes_it(
        failing_copies: FailingCopies, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = write_matrix(tmp_path, {"regions": ["us-east-1", "eu-west-1"], "ami_users": [ACCOUNT]})
    cell = only_cell(matrix)
    artifact = amazon_ebs_image(cell)
    with pytest.raises(CloudError, match="copy_image .* failed .ResourceLimitExceeded"):
        aws_store(cell.settings).publish(artifact)
    assert failing_copies.refused == 1
    (built,) = ours("us-east-1")
    assert PUBLISHED_TAG not in tags_of(built) and ours("eu-west-1") == []

    monkeypatch.chdir(tmp_path)  # resolve reads matrix.yaml from here
    with pytest.raises(UserError, match=r"1 built but not fully published\) \| fix: run 'imagebuilder publish'"):
        CliRunner().invoke(images, ["resolve", "--cloud", "aws", "--os", "debian-12", "--k8s", "1.31",
                                    "--region", "us-east-1"], standalone_mode=False, catch_exceptions=False)

    code, _, err = run_cli("publish", "-m", str(matrix))  # still failing: reported, exit 1, still unpublished
    assert code == 1 and "ResourceLimitExceeded" in err and PUBLISHED_TAG not in tags_of(ours("us-east-1")[0])

    failing_copies.failing = False
    code, out, _ = run_cli("publish", "-m", str(matrix))
    assert code == 0
    (copy,) = ours("eu-west-1")
    assert f"aws eu-west-1 {copy['ImageId']}: copied from us-east-1 {artifact.ids['us-east-1']}" in out
    assert all(tags_of(image)[PUBLISHED_TAG] == "true" for image in (*ours("us-east-1"), copy))
    assert run_cli("publish", "-m", str(matrix)) == (0, "", "")
    resolved = CliRunner().invoke(images, ["resolve", "--cloud", "aws", "--os", "debian-12", "--k8s", "1.31",
                                           "--region", "eu-west-1"], standalone_mode=False, catch_exceptions=False)
    assert resolved.output.strip() == copy["ImageId"]


def recording_packer(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `packer` first on PATH that records each invocation (and fails): the log must stay absent."""
    bin_dir, log = directory / "bin", directory / "packer-invocations.log"
    bin_dir.mkdir()
    script = bin_dir / "packer"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def test_build_completes_a_publish_cut_short_without_running_packer(
        failing_copies: FailingCopies, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = write_matrix(tmp_path, {"regions": ["us-east-1", "eu-west-1"], "ami_users": [ACCOUNT]})
    cell = only_cell(matrix)
    artifact = amazon_ebs_image(cell)
    with pytest.raises(CloudError, match="ResourceLimitExceeded"):
        aws_store(cell.settings).publish(artifact)  # Packer's image exists, its publish was cut short
    packer_log = recording_packer(tmp_path, monkeypatch)
    build = ("build", "-m", str(matrix), "--skip-preflight", "-o", str(tmp_path / "build"))

    code, out, _ = run_cli("plan", "-m", str(matrix), "--changed", "--format", "json")
    assert code == 0 and [c["id"] for c in json.loads(out)] == [cell.id]  # the nightly picks it up
    code, out, _ = run_cli(*build, "--dry-run")
    assert code == 0 and f"publish only (built: us-east-1:{artifact.ids['us-east-1']})" in out

    code, out, err = run_cli(*build)  # the copy still fails: the cell fails, nothing is marked published
    assert code == 1 and "ResourceLimitExceeded" in out + err
    assert PUBLISHED_TAG not in tags_of(ours("us-east-1")[0])

    failing_copies.failing = False
    code, out, err = run_cli(*build)
    assert code == 0, err
    (copy,) = ours("eu-west-1")
    assert f"aws eu-west-1 {copy['ImageId']}: copied from us-east-1 {artifact.ids['us-east-1']}" in out
    assert f"aws eu-west-1 {copy['ImageId']}: launch permissions +user {ACCOUNT}" in out
    assert "published 1" in out and "skipped" not in out and "done" not in out
    assert all(tags_of(image)[PUBLISHED_TAG] == "true" for image in (*ours("us-east-1"), copy))

    code, out, _ = run_cli(*build)  # the second run changes nothing
    assert code == 0 and "copied" not in out and "1 cells skipped" in out and len(ours("eu-west-1")) == 1
    assert run_cli("publish", "-m", str(matrix)) == (0, "", "")
    code, out, _ = run_cli("plan", "-m", str(matrix), "--changed", "--format", "json")
    assert (code, json.loads(out)) == (0, [])
    assert not packer_log.exists()  # no Packer run at any point


def test_no_publish_leaves_a_built_image_unpublished(aws_env: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = write_matrix(tmp_path, {"regions": ["us-east-1"]})
    artifact = amazon_ebs_image(only_cell(matrix))  # Packer's tags, without the published one
    boto3.client("ec2", region_name="us-east-1").create_tags(
        Resources=[artifact.ids["us-east-1"]],
        Tags=[{"Key": key, "Value": value} for key, value in artifact.metadata.to_tags().items()])
    packer_log = recording_packer(tmp_path, monkeypatch)
    code, out, _ = run_cli("build", "-m", str(matrix), "--skip-preflight", "--no-publish",
                           "-o", str(tmp_path / "build"))
    assert code == 0 and "1 cells skipped" in out and PUBLISHED_TAG not in tags_of(ours("us-east-1")[0])
    assert not packer_log.exists()


def test_cells_without_an_image_are_named_and_nothing_is_made(aws_env: str, tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, {"regions": ["us-east-1"]})
    code, out, err = run_cli("publish", "-m", str(matrix))
    assert (code, out) == (0, "") and "1 cells have no image yet" in err and "aws-debian-12-k8s-1.31" in err
    assert ours("us-east-1") == []


# -- OpenStack (real Glance) ----------------------------------------------------------------------------


def test_glance_visibility_and_members_follow_the_settings(openstack_env: str, tmp_path: Path) -> None:
    image = qcow2_file(tmp_path / "node.qcow2", "8M")
    metadata = sample_metadata(cell="openstack-debian-12-k8s-1.31")
    artifact = Artifact(cell_id=metadata.cell, cloud="openstack", build_key=metadata.build_key,
                        image_name="debian-12-kube-v1.31.4", metadata=metadata, ids={"default": str(image)},
                        files=[str(image)])
    private = store_for("openstack", OpenstackSettings())
    (image_id,) = private.publish(artifact).values()
    records = private.find_by_build_key(artifact.build_key)
    assert [r.published for r in records] == [True] and private.reconcile(records) == []

    shared = store_for("openstack", OpenstackSettings(visibility="shared", members=["project-a", "project-b"]))
    region = shared.region
    changes = shared.reconcile(shared.find_by_build_key(artifact.build_key))
    assert changes == [f"openstack {region} {image_id}: visibility shared (was private)",
                       f"openstack {region} {image_id}: member project-a added",
                       f"openstack {region} {image_id}: member project-b added"]
    conn = shared.conn  # type: ignore[attr-defined]
    assert conn.image.get_image(image_id).visibility == "shared"
    assert sorted(m.member_id for m in conn.image.members(image_id)) == ["project-a", "project-b"]
    assert shared.reconcile(shared.find_by_build_key(artifact.build_key)) == []

    fewer = store_for("openstack", OpenstackSettings(visibility="shared", members=["project-b"]))
    assert fewer.reconcile(fewer.find_by_build_key(artifact.build_key)) == [
        f"openstack {region} {image_id}: member project-a removed"]
    assert [m.member_id for m in conn.image.members(image_id)] == ["project-b"]


def test_members_without_shared_visibility_is_a_clear_matrix_error(tmp_path: Path) -> None:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text("os: [debian-12]\nkubernetes: [\"1.31\"]\nclouds:\n  openstack:\n    members: [p1]\n")
    code, out, err = run_cli("publish", "-m", str(matrix))
    assert code != 0 and out == ""
    assert "members" in err and "set visibility: shared" in err and "Traceback" not in err


# -- the local catalogue -----------------------------------------------------------------------------------


def test_an_unpublished_catalogue_record_is_completed_once(tmp_path: Path) -> None:
    catalogue = LocalCatalogue(tmp_path / "catalogue")
    image = qcow2_file(tmp_path / "node.qcow2", "1M")
    metadata = sample_metadata()
    artifact = Artifact(cell_id=metadata.cell, cloud="qemu", build_key=metadata.build_key, image_name="node",
                        metadata=metadata, ids={"local": str(image)}, files=[str(image)])
    (image_id,) = catalogue.publish(artifact).values()
    record = catalogue.get(image_id)
    assert record.published
    data = json.loads((catalogue.records_dir / f"{image_id}.json").read_text())
    del data["tags"][PUBLISHED_TAG]  # as a record written before the published flag, or by a publish cut short
    (catalogue.records_dir / f"{image_id}.json").write_text(json.dumps(data))
    assert not catalogue.get(image_id).published
    assert catalogue.reconcile([catalogue.get(image_id)]) == [f"local local {image_id}: tagged {PUBLISHED_TAG}"]
    assert catalogue.get(image_id).published and catalogue.reconcile([catalogue.get(image_id)]) == []


# -- GCP and Azure (stand-ins speaking their REST paths) ---------------------------------------------------


def gcp_packer_image(compute: GcpComputeStandin, timestamp: str, key: str) -> Artifact:
    """What a googlecompute build leaves: a READY image with Packer's labels and no family yet."""
    meta = gcp_metadata(timestamp, key)
    name = f"cluster-api-debian-12-v1-31-4-{timestamp}"
    compute.images[(GCP_PROJECT, name)] = {
        "kind": "compute#image", "id": timestamp, "name": name, "status": "READY",
        "creationTimestamp": "2026-11-25T10:00:00.000+00:00", "selfLink": compute.link(GCP_PROJECT, "images", name),
        "labels": {"imagebuilder-build-key": key * 63}, "labelFingerprint": "fp0", "family": "", "description": ""}
    return Artifact(cell_id="gcp-debian-12-k8s-1.31", cloud="gcp", build_key=meta.build_key, image_name=name,
                    metadata=meta, ids={"default": name})


def test_gcp_a_publish_cut_short_is_completed_by_reconcile_and_older_builds_deprecated(
        compute: GcpComputeStandin, gcs: str) -> None:
    store = gcp_store(compute, gcs)
    older, newer = gcp_packer_image(compute, "1764000000", "b"), gcp_packer_image(compute, "1764064800", "a")
    store.publish(older)
    compute.fail_next_operation.append({"code": "RESOURCE_NOT_READY", "message": "the image is busy", "http": 400})
    with pytest.raises(CloudError, match="RESOURCE_NOT_READY"):
        store.publish(newer)
    (record,) = store.find_by_build_key(newer.build_key)
    assert not record.published
    name, old_name = record.image_id, older.ids["default"]
    changes = store.reconcile([record])
    assert f"gcp global {name}: family capi-debian-12-k8s-1-31, description" in changes
    assert f"gcp global {old_name}: deprecated, replaced by {name}" in changes
    assert changes[-1] == f"gcp global {name}: tagged {PUBLISHED_TAG}"
    assert compute.images[(GCP_PROJECT, name)]["labels"][PUBLISHED_TAG] == "true"
    assert compute.images[(GCP_PROJECT, old_name)]["deprecated"]["state"] == "DEPRECATED"
    writes = len(compute.calls("POST")) + len(compute.calls("PATCH"))
    assert store.reconcile(store.find_by_build_key(newer.build_key)) == []
    assert len(compute.calls("POST")) + len(compute.calls("PATCH")) == writes


def test_azure_a_new_target_region_and_replica_count_reach_the_existing_version(
        arm: AzureComputeStandin, azurite: Azurite) -> None:
    store = azure_store(arm, azurite)  # target regions northeurope (and the gallery's westeurope), 2 replicas
    store.publish(azure_packer_artifact(azure_metadata("1764064800")))
    (record,) = store.find_by_build_key("a" * 64)
    assert record.published and store.reconcile([record]) == []

    wider = AzureImageStore(store.settings.model_copy(update={"target_regions": ["northeurope", "eastus"],
                                                              "replica_count": 3}),
                            subscription_id=store.subscription_id, credential=store.credential,
                            base_url=arm.base_url, polling_interval=0, sleep=lambda _: None)
    assert wider.reconcile([record]) == [
        f"azure westeurope {record.name}: target regions westeurope, northeurope, eastus; replica count 3"]
    (record,) = wider.find_by_build_key("a" * 64)
    assert record.extra["target_regions"] == ["westeurope", "northeurope", "eastus"]
    assert set(record.extra["replica_counts"].values()) == {3}
    assert wider.reconcile([record]) == []
