"""Publishing to AWS against a moto server over HTTP; botocore's Stubber only where moto falls short.

An amazon-ebs build is stood in for by registering an AMI from a snapshot in the build
region, as Packer leaves it. Moto gaps covered with the Stubber: image deprecation,
MaxResults/NextToken pagination, throttling, an image vanishing while it is copied.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from click.testing import CliRunner
from services import aws_env, moto_url, sample_metadata  # noqa: F401,F811 (fixtures)

from imagebuilder.artifact import Artifact, from_packer_manifest
from imagebuilder.clouds import CloudError, ImageFilter, newest, store_for
from imagebuilder.cli.images import images
from imagebuilder.clouds.aws.settings import AwsSettings
from imagebuilder.clouds.aws.store import AwsImageStore, parameter_name
from imagebuilder.publishing import publish_artifact
from imagebuilder.errors import UserError
from imagebuilder.metadata import PUBLISHED_TAG

DATA = Path(__file__).parent / "data"
TWO_REGIONS = ["us-east-1", "eu-west-1"]
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)


def ebs_build(region: str = "us-east-1", key: str = "a", timestamp: str = "1764064800", minor: str = "1.31",
              os_id: str = "debian-12") -> Artifact:
    """What amazon-ebs leaves behind: an AMI registered from a snapshot, untagged (moto ignores TagSpecifications)."""
    ec2 = boto3.client("ec2", region_name=region)
    volume = ec2.create_volume(AvailabilityZone=f"{region}a", Size=8)
    snapshot = ec2.create_snapshot(VolumeId=volume["VolumeId"])["SnapshotId"]
    version = f"v{minor}.4"
    name = f"capa-ami-{os_id}-{version}-{timestamp}"
    image_id = ec2.register_image(
        Name=name, Architecture="x86_64", RootDeviceName="/dev/xvda", VirtualizationType="hvm", EnaSupport=True,
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}])["ImageId"]
    cell = f"aws-{os_id}-k8s-{minor}"
    metadata = sample_metadata(os=os_id, build_key=key * 64, cell=cell, kubernetes_version=version,
                               kubernetes_minor=minor, build_timestamp=timestamp)
    return Artifact(cell_id=cell, cloud="aws", build_key=key * 64, image_name=name, metadata=metadata,
                    ids={region: image_id})


def fast_store(settings: AwsSettings, sleeps: list[float] | None = None) -> AwsImageStore:
    """A store whose waiters and backoff do not wait for real time; sleeps are recorded.

    It shares boto3's default session, whose loaded service models make new clients cheap
    (a fresh session spends about 0.4 s loading EC2's); the environment still decides the
    endpoint and credentials of every client it makes.
    """
    record = sleeps if sleeps is not None else []
    return AwsImageStore(settings, boto3._get_default_session(), waiter_delay=1, waiter_max_attempts=3, backoff=0.5,
                         sleep=record.append)


def describe(region: str, image_id: str) -> dict[str, Any]:
    return boto3.client("ec2", region_name=region).describe_images(ImageIds=[image_id])["Images"][0]


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def images_named(region: str, name: str) -> list[dict[str, Any]]:
    ec2 = boto3.client("ec2", region_name=region)
    return ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]


# -- the real flow, over HTTP -----------------------------------------------------------------


def test_publish_copies_tags_image_and_snapshots_and_stays_private(aws_env: str) -> None:
    artifact = ebs_build()
    ids = publish_artifact(artifact, {"regions": TWO_REGIONS, "max_parallel": 2, "instance_type": "t3.large"})
    assert set(ids) == set(TWO_REGIONS)
    assert ids["us-east-1"] == artifact.ids["us-east-1"]
    assert ids["eu-west-1"].startswith("ami-") and ids["eu-west-1"] != ids["us-east-1"]
    expected = {**artifact.metadata.to_tags(), "Name": artifact.image_name, PUBLISHED_TAG: "true"}
    for region, image_id in ids.items():
        image = describe(region, image_id)
        assert tags_of(image) == expected
        assert image["Public"] is False
        ec2 = boto3.client("ec2", region_name=region)
        assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
        (snapshot_id,) = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
        snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        assert tags_of(snapshot) == expected
    records = store_for("aws", AwsSettings(regions=TWO_REGIONS)).list_images()
    assert sorted((r.region, r.image_id) for r in records) == sorted(ids.items())
    assert all(r.metadata == artifact.metadata for r in records)


def test_a_packer_manifest_is_published_as_it_comes(aws_env: str, tmp_path: Path) -> None:
    """The amazon-ebs manifest (artifact_id 'region:ami', our custom_data) through from_packer_manifest."""
    built = ebs_build()
    manifest = tmp_path / "packer-manifest.json"
    manifest.write_text(json.dumps({"builds": [{
        "name": "node", "builder_type": "amazon-ebs", "build_time": 1764064800,
        "artifact_id": f"us-east-1:{built.ids['us-east-1']}", "files": None,
        "custom_data": {"metadata": json.dumps(built.metadata.to_tags()),
                        "versions": json.dumps({"kubernetes": "1.31.4"}), "image_name": built.image_name}}]}))
    artifact = from_packer_manifest(manifest, "aws")
    ids = publish_artifact(artifact, {"regions": TWO_REGIONS})
    assert ids["us-east-1"] == built.ids["us-east-1"] and set(ids) == set(TWO_REGIONS)
    assert tags_of(describe("eu-west-1", ids["eu-west-1"]))["Name"] == built.image_name


def test_republishing_finds_the_copies_and_never_duplicates(aws_env: str) -> None:
    artifact = ebs_build()
    store = fast_store(AwsSettings(regions=[*TWO_REGIONS, "ap-southeast-2"]))
    first = store.publish(artifact)
    assert store.publish(artifact) == first
    for region in first:
        assert len(images_named(region, artifact.image_name)) == 1
    assert [r.image_id for r in store.find_by_build_key(artifact.build_key, "eu-west-1")] == [first["eu-west-1"]]


def test_an_untagged_copy_left_by_an_interrupted_run_is_reused(aws_env: str) -> None:
    artifact = ebs_build()
    left_over = boto3.client("ec2", region_name="eu-west-1").copy_image(
        SourceRegion="us-east-1", SourceImageId=artifact.ids["us-east-1"], Name=artifact.image_name)["ImageId"]
    ids = fast_store(AwsSettings(regions=TWO_REGIONS)).publish(artifact)
    assert ids["eu-west-1"] == left_over
    assert len(images_named("eu-west-1", artifact.image_name)) == 1
    assert tags_of(describe("eu-west-1", left_over))["imagebuilder-build-key"] == artifact.build_key


def test_sharing_with_accounts_and_public_then_back_to_private(aws_env: str) -> None:
    artifact = ebs_build()
    shared = AwsSettings(regions=TWO_REGIONS, ami_users=["111122223333"], ami_groups=["all"])
    ids = fast_store(shared).publish(artifact)
    for region, image_id in ids.items():
        ec2 = boto3.client("ec2", region_name=region)
        permissions = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]
        assert sorted(map(json.dumps, permissions)) == sorted(
            map(json.dumps, [{"UserId": "111122223333"}, {"Group": "all"}]))
        assert describe(region, image_id)["Public"] is True
        snapshot = describe(region, image_id)["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        volume_permissions = ec2.describe_snapshot_attribute(
            SnapshotId=snapshot, Attribute="createVolumePermission")["CreateVolumePermissions"]
        assert volume_permissions == [{"UserId": "111122223333"}]
    fast_store(AwsSettings(regions=TWO_REGIONS)).publish(artifact)  # the matrix went back to private
    for region, image_id in ids.items():
        ec2 = boto3.client("ec2", region_name=region)
        assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
        assert describe(region, image_id)["Public"] is False


def test_ssm_parameter_names_the_newest_image_per_os_and_minor(aws_env: str) -> None:
    settings = AwsSettings(regions=TWO_REGIONS, ssm_parameter_prefix="/imagebuilder/images")
    newer = ebs_build(key="b", timestamp="1764000000")
    older = ebs_build(key="c", timestamp="1700000000")
    newer_ids = fast_store(settings).publish(newer)
    older_ids = fast_store(settings).publish(older)  # published later, built earlier: must not win
    name = parameter_name("/imagebuilder/images", newer.metadata)
    assert name == "/imagebuilder/images/debian-12/1.31/amd64"
    for region in TWO_REGIONS:
        ssm = boto3.client("ssm", region_name=region)
        assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == newer_ids[region]
    newest_ids = fast_store(settings).publish(ebs_build(key="d", timestamp="1765000000"))
    for region in TWO_REGIONS:
        value = boto3.client("ssm", region_name=region).get_parameter(Name=name)["Parameter"]["Value"]
        assert value == newest_ids[region] and value != older_ids[region]


def test_resolve_prints_the_newest_image_of_a_region(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = AwsSettings(regions=TWO_REGIONS)
    old_ids = fast_store(settings).publish(ebs_build(key="b", timestamp="1700000000"))
    new_ids = fast_store(settings).publish(ebs_build(key="c", timestamp="1760000000"))
    fast_store(settings).publish(ebs_build(key="d", minor="1.32"))
    monkeypatch.chdir(DATA)  # tests/data/matrix.yaml declares aws in us-east-1 and eu-west-1
    runner = CliRunner()

    def run(*args: str) -> str:
        return runner.invoke(images, list(args), standalone_mode=False, catch_exceptions=False).output

    args = ["resolve", "--cloud", "aws", "--os", "debian-12", "--k8s", "1.31"]
    assert run(*args, "--region", "eu-west-1").strip() == new_ids["eu-west-1"]
    assert run("resolve", "-m", "matrix.yaml", *args[1:], "--region", "us-east-1").strip() == new_ids["us-east-1"]
    with pytest.raises(UserError, match="several regions .eu-west-1, us-east-1. | fix: add --region"):
        run(*args)
    listed = json.loads(run("list", "--cloud", "aws", "--k8s", "1.31", "--output", "json"))
    assert sorted(entry["image_id"] for entry in listed) == sorted([*old_ids.values(), *new_ids.values()])
    assert {entry["kubernetes_minor"] for entry in listed} == {"1.31"}
    records = store_for("aws", settings).list_images(ImageFilter(kubernetes_minor="1.31", region="us-east-1"))
    assert newest(records).image_id == new_ids["us-east-1"]  # type: ignore[union-attr]


def test_unknown_region_is_refused_before_any_copy(aws_env: str) -> None:
    with pytest.raises(CloudError, match="unknown region 'us-esat-1'"):
        fast_store(AwsSettings()).list_images(ImageFilter(region="us-esat-1"))
    artifact = ebs_build()
    with pytest.raises(CloudError, match="clouds.aws.regions: unknown region 'eu-wset-1' | fix"):
        fast_store(AwsSettings(regions=["us-east-1", "eu-wset-1"])).publish(artifact)
    assert tags_of(describe("us-east-1", artifact.ids["us-east-1"])) == {}


def test_a_vanished_source_image_is_a_clear_error(aws_env: str) -> None:
    artifact = ebs_build()
    boto3.client("ec2", region_name="us-east-1").deregister_image(ImageId=artifact.ids["us-east-1"])
    with pytest.raises(CloudError) as caught:
        fast_store(AwsSettings(regions=TWO_REGIONS)).publish(artifact)
    message = str(caught.value)
    assert artifact.ids["us-east-1"] in message and "\n" not in message and "testing" not in message
    assert images_named("eu-west-1", artifact.image_name) == []


def test_delete_removes_the_image_and_its_snapshots(aws_env: str) -> None:
    artifact = ebs_build()
    store = fast_store(AwsSettings(regions=TWO_REGIONS))
    ids = store.publish(artifact)
    (record,) = store.find_by_build_key(artifact.build_key, "eu-west-1")
    snapshots = record.extra["snapshots"]
    assert store.delete(record) == [ids["eu-west-1"], *snapshots]
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    assert images_named("eu-west-1", artifact.image_name) == []
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "snapshot-id", "Values": snapshots}])["Snapshots"] == []
    assert [r.region for r in store.find_by_build_key(artifact.build_key)] == ["us-east-1"]


def test_in_use_reports_instances_and_launch_templates(aws_env: str) -> None:
    artifact = ebs_build()
    store = fast_store(AwsSettings(regions=["us-east-1"]))
    store.publish(artifact)
    (record,) = store.find_by_build_key(artifact.build_key)
    assert store.in_use(record) == []
    ec2 = boto3.client("ec2", region_name="us-east-1")
    instance = ec2.run_instances(ImageId=record.image_id, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    template = ec2.create_launch_template(LaunchTemplateName="nodes", LaunchTemplateData={
        "ImageId": record.image_id})["LaunchTemplate"]["LaunchTemplateId"]
    users = store.in_use(record)
    assert f"instance {instance}" in users and f"launch template {template} version 1" in users
    ec2.terminate_instances(InstanceIds=[instance])
    assert store.in_use(record) == [f"launch template {template} version 1"]


def test_missing_credentials_say_how_to_provide_them(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CloudError, match="aws us-east-1: describe_images: no AWS credentials found | fix: export"):
        AwsImageStore(AwsSettings()).list_images()


# -- moto's gaps, with botocore's Stubber ---------------------------------------------------------


def stubbed(store: AwsImageStore, region: str = "us-east-1", service: str = "ec2") -> Stubber:
    stubber = Stubber(store.client(service, region))
    stubber.activate()
    return stubber


def image_answer(image_id: str, name: str = "capa-ami-x", state: str = "available", **extra: Any) -> dict[str, Any]:
    return {"ImageId": image_id, "Name": name, "State": state, "CreationDate": "2026-11-25T10:00:00.000Z",
            "OwnerId": "123456789012", "Public": False, "BlockDeviceMappings": [], **extra}


def test_deprecate_calls_enable_image_deprecation_on_whole_minutes(aws_env: str) -> None:
    store = fast_store(AwsSettings())
    artifact = ebs_build()
    record = store.describe("us-east-1", artifact.ids["us-east-1"])
    stubber = stubbed(store)
    when = datetime.now(timezone.utc) + timedelta(days=14, seconds=7)
    expected = when.replace(second=0, microsecond=0) + timedelta(minutes=1)
    stubber.add_response("enable_image_deprecation", {"Return": True},
                         {"ImageId": record.image_id, "DeprecateAt": expected})
    store.deprecate(record, when)
    stubber.assert_no_pending_responses()


def test_deprecated_images_are_listed_but_not_resolved(aws_env: str) -> None:
    store = fast_store(AwsSettings(regions=["us-east-1"]))
    tags = [{"Key": k, "Value": v} for k, v in sample_metadata(build_timestamp="1765000000").to_tags().items()]
    older_tags = [{"Key": k, "Value": v} for k, v in sample_metadata(build_timestamp="1700000000").to_tags().items()]
    stubber = stubbed(store)
    stubber.add_response("describe_images", {"Images": [
        image_answer("ami-0new", Tags=tags, DeprecationTime="2026-01-01T00:00:00.000Z"),
        image_answer("ami-0old", Tags=older_tags)]})
    records = store.list_images()
    assert [r.image_id for r in records] == ["ami-0new", "ami-0old"]
    assert records[0].deprecated() and not records[1].deprecated()
    assert newest(records).image_id == "ami-0old"  # type: ignore[union-attr]


def test_listing_follows_next_token_pages(aws_env: str) -> None:
    store = fast_store(AwsSettings(regions=["us-east-1"]))
    tags = [{"Key": k, "Value": v} for k, v in sample_metadata().to_tags().items()]
    expected_filters = {"Owners": ["self"], "IncludeDeprecated": True, "MaxResults": 1000,
                        "Filters": [{"Name": "tag:imagebuilder-os", "Values": ["debian-12"]},
                                    {"Name": "tag-key", "Values": ["imagebuilder-build-key"]}]}
    stubber = stubbed(store)
    stubber.add_response("describe_images", {"Images": [image_answer("ami-0001", Tags=tags)], "NextToken": "page-2"},
                         expected_filters)
    stubber.add_response("describe_images", {"Images": [image_answer("ami-0002", Tags=tags)]},
                         {**expected_filters, "NextToken": "page-2"})
    records = store.list_images(ImageFilter(os="debian-12"))
    assert sorted(r.image_id for r in records) == ["ami-0001", "ami-0002"]
    stubber.assert_no_pending_responses()


def test_throttling_and_503_are_retried_with_growing_backoff(aws_env: str) -> None:
    sleeps: list[float] = []
    store = fast_store(AwsSettings(regions=["us-east-1"]), sleeps)
    stubber = stubbed(store)
    stubber.add_client_error("describe_images", "RequestLimitExceeded", "Request limit exceeded.", 503)
    stubber.add_client_error("describe_images", "ServiceUnavailable", "Service Unavailable", 503)
    stubber.add_client_error("describe_images", "Throttling", "Rate exceeded", 400)
    stubber.add_response("describe_images", {"Images": [image_answer("ami-0001")]})
    record = store.describe("us-east-1", "ami-0001")
    assert record.image_id == "ami-0001"
    assert len(sleeps) == 3 and sleeps[0] <= 0.5 and sleeps[2] > sleeps[0] and sleeps[2] >= 1.0
    stubber.assert_no_pending_responses()


def test_endless_throttling_ends_in_a_one_line_error(aws_env: str) -> None:
    sleeps: list[float] = []
    store = fast_store(AwsSettings(regions=["us-east-1"]), sleeps)
    stubber = stubbed(store)
    for _ in range(store.max_attempts):
        stubber.add_client_error("describe_images", "RequestLimitExceeded", "Request limit exceeded.", 503)
    with pytest.raises(CloudError, match=r"still throttled or unavailable after retries \(RequestLimitExceeded\)"):
        store.describe("us-east-1", "ami-0001")
    assert len(sleeps) == store.max_attempts - 1


def test_an_image_vanishing_mid_copy_is_a_clear_error(aws_env: str) -> None:
    """The build region is moto; the copy region is stubbed: the copy starts, then disappears."""
    artifact = ebs_build()
    store = fast_store(AwsSettings(regions=TWO_REGIONS))
    stubber = stubbed(store, "eu-west-1")
    stubber.add_response("describe_images", {"Images": []})  # no copy with this build key
    stubber.add_response("describe_images", {"Images": []})  # nor with this name
    stubber.add_response("copy_image", {"ImageId": "ami-0c0py"}, {
        "SourceRegion": "us-east-1", "SourceImageId": artifact.ids["us-east-1"], "Name": artifact.image_name,
        "Description": f"imagebuilder {artifact.cell_id} {artifact.build_key[:12]}"})
    stubber.add_response("describe_images", {"Images": [image_answer("ami-0c0py", state="pending")]})
    stubber.add_client_error("describe_images", "InvalidAMIID.NotFound", "The image id '[ami-0c0py]' does not exist")
    with pytest.raises(CloudError, match=r"aws eu-west-1: image ami-0c0py vanished .* \| fix: run publish again"):
        store.publish(artifact)
    stubber.assert_no_pending_responses()


def test_a_copy_that_fails_is_reported_with_its_reason(aws_env: str) -> None:
    store = fast_store(AwsSettings(regions=["eu-west-1"]))
    stubber = stubbed(store, "eu-west-1")
    stubber.add_response("describe_images", {"Images": [image_answer(
        "ami-0bad", state="failed", StateReason={"Code": "Client.UnsupportedOperation", "Message": "copy failed"})]})
    with pytest.raises(CloudError, match=r"image ami-0bad failed: copy failed \| fix: deregister it"):
        store.wait_available("eu-west-1", "ami-0bad")


def test_a_denied_permission_names_the_action_to_allow(aws_env: str) -> None:
    store = fast_store(AwsSettings(regions=["us-east-1"]))
    record = store.describe("us-east-1", ebs_build().ids["us-east-1"])
    stubber = stubbed(store)
    stubber.add_response("describe_image_attribute", {"ImageId": record.image_id, "LaunchPermissions": []})
    stubber.add_client_error("modify_image_attribute", "UnauthorizedOperation",
                             "You are not authorized to perform this operation.", 403)
    with pytest.raises(CloudError) as caught:
        store.share(record, ["111122223333"])
    message = str(caught.value)
    assert "was denied (UnauthorizedOperation" in message
    assert "fix: allow ec2:ModifyImageAttribute" in message and "\n" not in message and "testing" not in message
