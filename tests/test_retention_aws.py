"""Retention on AWS against a moto server over HTTP (with EnableImageDeprecation added, see
test_retention_services): decisions and reasons, in-use protection from instances, launch
template versions, launch configurations and auto scaling groups, staged deletion with
snapshots, orphan sweeping, failed checks kept, partial failures, the lock, the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from services import sample_metadata
from test_retention_services import aws_environment, retention_aws, retention_moto_url  # noqa: F401,F811 (fixtures)

from imagebuilder import locks, retention
from imagebuilder.clouds.aws.store import AwsImageStore
from imagebuilder.clouds.aws.settings import AwsSettings
from imagebuilder.config import RetentionPolicy

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
REGIONS = ["us-east-1", "eu-west-1"]
NOW = datetime.now(timezone.utc)
LONG_AGO = "2026-01-01T00:00:00.000Z"


_CLIENTS: dict[tuple[str, str, str], Any] = {}


def client(service: str, region: str) -> Any:
    """One boto3 client per service, region and endpoint: creating clients costs more than the calls."""
    key = (service, region, os.environ.get("AWS_ENDPOINT_URL", ""))
    if key not in _CLIENTS:
        _CLIENTS[key] = boto3.client(service, region_name=region)
    return _CLIENTS[key]


def stamp(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).strftime("%Y%m%d%H%M%S")


def publish(region: str, key: str, days_ago: float, *, minor: str = "1.31", os_id: str = "debian-12",
            deprecated: str | None = None, extra_tags: dict[str, str] | None = None, tag: bool = True) -> str:
    """An AMI as publish leaves it: it and its snapshots tagged with the metadata."""
    ec2 = client("ec2", region)
    image_id = ec2.register_image(Name=f"ib-{os_id}-{minor}-{key}", RootDeviceName="/dev/xvda",
                                  Architecture="x86_64", VirtualizationType="hvm")["ImageId"]
    snapshots = [m["Ebs"]["SnapshotId"] for m in
                 ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]]
    tags = sample_metadata(os=os_id, kubernetes_minor=minor, kubernetes_version=f"v{minor}.2", build_key=key * 64,
                           cell=f"aws-{os_id}-k8s-{minor}", build_timestamp=stamp(days_ago)).to_tags()
    tags.update(extra_tags or {})
    if tag:
        ec2.create_tags(Resources=[image_id, *snapshots], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    if deprecated:
        ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt=deprecated)
    return image_id


def images(region: str) -> dict[str, dict[str, Any]]:
    answer = client("ec2", region).describe_images(Owners=["self"], IncludeDeprecated=True)
    return {image["ImageId"]: image for image in answer["Images"]}


def snapshots(region: str) -> set[str]:
    answer = client("ec2", region).describe_snapshots(OwnerIds=["self"])
    return {s["SnapshotId"] for s in answer["Snapshots"]}


def snapshot_of(region: str, image_id: str) -> str:
    return images(region)[image_id]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]


def store(regions: list[str] | None = None, session: boto3.session.Session | None = None) -> AwsImageStore:
    return AwsImageStore(AwsSettings(regions=regions or REGIONS), session=session, max_attempts=2, backoff=0.01,
                         sleep=lambda _: None)


def denying_session(operation: str, code: str = "UnauthorizedOperation",
                    only: str | None = None) -> boto3.session.Session:
    """A session whose `operation` calls answer `code` (for one image id only, when `only` is set)."""
    core = botocore.session.get_session()

    def deny(params: dict[str, Any], **_: Any) -> Any:
        if only is not None and only not in json.dumps(params.get("body", ""), default=str):
            return None
        response = AWSResponse("https://denied", 403, {}, None)
        return response, {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": 403}}

    service, name = operation.split(".")
    core.register(f"before-call.{service}.{name}", deny)
    return boto3.session.Session(botocore_session=core)


def by_id(decisions: list[retention.Decision]) -> dict[str, retention.Decision]:
    return {d.record.image_id: d for d in decisions}


def matrix(tmp_path: Path, regions: list[str] = REGIONS, retention_yaml: str = "") -> Path:
    path = tmp_path / "matrix.yaml"
    path.write_text(f"versions_file: {DATA / 'versions.lock.yaml'}\nos: [debian-12]\nkubernetes: [\"1.31\"]\n"
                    f"clouds:\n  aws:\n    regions: [{', '.join(regions)}]\n{retention_yaml}")
    return path


def run_prune(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", "prune", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)


def cli_env(tmp_path: Path, url: str) -> dict[str, str]:
    env = aws_environment(url, tmp_path)
    env["IMAGEBUILDER_CACHE"] = str(tmp_path / "cache")
    env["IMAGEBUILDER_CATALOGUE"] = str(tmp_path / "catalogue")
    return env


# -- decisions -----------------------------------------------------------------------------


def test_every_rule_gives_its_decision_and_reason(retention_aws: str) -> None:
    east = "us-east-1"
    newest = [publish(east, k, days) for k, days in (("1", 1), ("2", 20), ("3", 30))]
    old_in_instance = publish(east, "4", 40)
    old_in_template = publish(east, "5", 41)
    old_in_configuration = publish(east, "6", 42)
    protected = publish(east, "7", 43, extra_tags={"imagebuilder-protect": "ticket-42"})
    plain_old = publish(east, "8", 44)
    grace = publish(east, "9", 45, deprecated=(NOW - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    expired = publish(east, "a", 46, deprecated=LONG_AGO)
    foreign = publish(east, "b", 47, tag=False)
    half = publish(east, "c", 48, tag=False)
    client("ec2", east).create_tags(Resources=[half],
                                                      Tags=[{"Key": "imagebuilder-os", "Value": "debian-12"}])
    other_group = publish(east, "d", 90, minor="1.32")  # alone in its group: newest, kept
    west_old = publish("eu-west-1", "e", 90)  # newest of its region's group

    ec2 = client("ec2", east)
    instance = ec2.run_instances(ImageId=old_in_instance, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=[instance])  # stopped still counts
    template = ec2.create_launch_template(LaunchTemplateName="nodes", LaunchTemplateData={"ImageId": newest[0]})
    template_id = template["LaunchTemplate"]["LaunchTemplateId"]
    ec2.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": old_in_template})
    ec2.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": newest[0]})
    autoscaling = client("autoscaling", east)
    autoscaling.create_launch_configuration(LaunchConfigurationName="legacy", ImageId=old_in_configuration,
                                            InstanceType="t3.micro")
    autoscaling.create_auto_scaling_group(AutoScalingGroupName="legacy-asg", LaunchConfigurationName="legacy",
                                          MinSize=0, MaxSize=1, AvailabilityZones=["us-east-1a"])

    inventory = retention.gather(store())
    decisions = by_id(retention.decide(inventory.records, inventory.in_use, RetentionPolicy(),
                                       unknown_reasons=inventory.unknown_reasons))

    assert foreign not in decisions and inventory.foreign_count == 1  # never even listed
    assert decisions[half].action is retention.Action.KEEP and decisions[half].reason.startswith("not ours")
    assert decisions[newest[0]].reason.startswith("in use by launch template")  # in use comes first
    for image_id in newest[1:]:
        assert decisions[image_id].reason == "newest 3"
    assert decisions[old_in_instance].reason.startswith(f"in use by {instance}")
    assert f"launch template {template_id} version 2" in decisions[old_in_template].reason
    assert "launch configuration legacy" in decisions[old_in_configuration].reason
    assert "auto scaling group legacy-asg" in decisions[old_in_configuration].reason
    assert decisions[protected].reason == "protected (imagebuilder-protect)"
    assert decisions[plain_old].action is retention.Action.DEPRECATE
    assert decisions[grace].action is retention.Action.KEEP and decisions[grace].reason.startswith("deprecated, grace")
    assert decisions[expired].action is retention.Action.DELETE
    assert decisions[other_group].reason == "newest 3" and decisions[west_old].reason == "newest 3"
    assert inventory.orphans == [] and inventory.errors == []


def test_a_denied_reference_listing_keeps_every_image_of_the_region_and_says_why(retention_aws: str) -> None:
    doomed = publish("us-east-1", "1", 90, deprecated=LONG_AGO)
    for key, days in (("2", 1), ("3", 2), ("4", 3)):
        publish("us-east-1", key, days)
    west = [publish("eu-west-1", key, 90 + i, deprecated=LONG_AGO) for i, key in enumerate("56789")]

    session = denying_session("ec2.DescribeLaunchTemplates")
    inventory = retention.gather(store(["us-east-1"], session))
    decision = by_id(retention.decide(inventory.records, inventory.in_use, RetentionPolicy(),
                                      unknown_reasons=inventory.unknown_reasons))[doomed]
    assert decision.action is retention.Action.KEEP
    assert decision.reason.startswith("in-use check failed: aws us-east-1: describe_launch_templates")
    assert "UnauthorizedOperation" in decision.reason and "\n" not in decision.reason

    west_inventory = retention.gather(store(["eu-west-1"]))  # the other region is unaffected
    west_decisions = by_id(retention.decide(west_inventory.records, west_inventory.in_use, RetentionPolicy()))
    assert [west_decisions[i].action for i in west[3:]] == [retention.Action.DELETE] * 2


def test_apply_deprecates_deletes_with_snapshots_and_a_rerun_converges(retention_aws: str) -> None:
    region = "us-east-1"
    kept = [publish(region, k, d) for k, d in (("1", 1), ("2", 2), ("3", 3))]
    to_deprecate = publish(region, "4", 30)
    to_delete = [publish(region, k, 40, deprecated=LONG_AGO) for k in "56"]
    delete_snapshots = {snapshot_of(region, i) for i in to_delete}
    aws = store([region])

    first = retention.decide(retention.gather(aws).records, retention.gather(aws).in_use, RetentionPolicy())
    outcomes = retention.apply(first, aws)
    assert all(o.ok for o in outcomes), outcomes
    assert {o.subject for o in outcomes if o.action == "delete"} == set(to_delete)
    left = images(region)
    assert set(left) == {*kept, to_deprecate}
    assert left[to_deprecate].get("DeprecationTime")
    assert not delete_snapshots & snapshots(region)  # deleting an AMI deleted its snapshots
    assert all(snapshot_of(region, i) in snapshots(region) for i in left)

    again = retention.gather(aws)
    second = by_id(retention.decide(again.records, again.in_use, RetentionPolicy()))
    assert second[to_deprecate].reason.startswith("deprecated, grace until")
    assert all(d.action is retention.Action.KEEP for d in second.values()) and again.orphans == []


def test_orphan_snapshots_are_reported_then_swept_and_nothing_else(retention_aws: str) -> None:
    region = "us-east-1"
    gone = publish(region, "1", 50)
    orphan = snapshot_of(region, gone)
    client("ec2", region).deregister_image(ImageId=gone)  # a delete killed half-way
    deprecated = publish(region, "2", 60, deprecated=LONG_AGO, extra_tags={"imagebuilder-protect": "yes"})
    foreign_image = publish(region, "3", 60, tag=False)
    client("ec2", region).deregister_image(ImageId=foreign_image)
    aws = store([region])
    listed: list[list[str]] = []  # what each DescribeSnapshots answer held once parsed
    aws.session.events.register("after-call.ec2.DescribeSnapshots", lambda parsed, **_: listed.append(
        [snapshot["SnapshotId"] for snapshot in parsed.get("Snapshots", [])]))

    inventory = retention.gather(aws)
    assert [o.resource_id for o in inventory.orphans] == [orphan]
    # one pass, and the snapshots the image listing names are skipped at their id, not read again
    assert listed == [[orphan]] and snapshot_of(region, deprecated) in snapshots(region)
    assert snapshot_of(region, deprecated) not in {o.resource_id for o in inventory.orphans}
    outcomes = retention.sweep(inventory.orphans, inventory.sweep)
    assert [o.done for o in outcomes] == [[orphan]]
    remaining = snapshots(region)
    assert orphan not in remaining and snapshot_of(region, deprecated) in remaining
    assert len(remaining) == 2  # the deprecated image's and the untagged leftover
    assert retention.gather(aws).orphans == []


def test_one_failing_delete_does_not_stop_the_others(retention_aws: str) -> None:
    region = "us-east-1"
    for key, days in (("1", 1), ("2", 2), ("3", 3)):
        publish(region, key, days)
    stuck, *others = [publish(region, k, 40, deprecated=LONG_AGO) for k in "456"]
    aws = store([region], denying_session("ec2.DeregisterImage", "OperationNotPermitted", only=stuck))
    inventory = retention.gather(aws)
    decisions = retention.decide(inventory.records, inventory.in_use, RetentionPolicy())
    outcomes = {o.subject: o for o in retention.apply(decisions, aws)}
    assert not outcomes[stuck].ok and "OperationNotPermitted" in (outcomes[stuck].error or "")
    assert all(outcomes[i].ok for i in others)
    assert stuck in images(region) and not set(others) & set(images(region))
    summary = retention.summarize(decisions, [], list(outcomes.values()))
    assert summary.failed == 1 and summary.delete == 3


def test_in_use_is_gathered_once_per_region_not_per_image(retention_aws: str) -> None:
    """Requests stay a few per region plus one per launch template, however many images."""
    for region in REGIONS:
        for index in range(40):
            publish(region, f"{index:x}", 30 + index)
    ec2 = client("ec2", "us-east-1")
    for index in range(5):
        ec2.create_launch_template(LaunchTemplateName=f"template-{index}", LaunchTemplateData={"ImageId": "ami-12345678"})
    aws = store()
    sent: list[str] = []
    aws.session.events.register("before-send", lambda request, **_: sent.append(request.url))
    snapshot_listings: list[str] = []
    aws.session.events.register("before-call.ec2.DescribeSnapshots", lambda **_: snapshot_listings.append("x"))
    inventory = retention.gather(aws)
    assert len(inventory.records) == 80
    assert 0 < len(sent) <= 6 * len(REGIONS) + 5 + 1, sent
    assert len(snapshot_listings) == len(REGIONS)  # the orphan sweep's one pass per region, no second


# -- the CLI -------------------------------------------------------------------------------


def test_cli_dry_run_changes_nothing_and_apply_reports_progress_and_summary(retention_aws: str,
                                                                            tmp_path: Path) -> None:
    region = "us-east-1"
    for key, days in (("1", 1), ("2", 2), ("3", 3)):
        publish(region, key, days)
    doomed = publish(region, "4", 40, deprecated=LONG_AGO)
    env = cli_env(tmp_path, retention_aws)
    path = matrix(tmp_path, [region])

    dry = run_prune(["-m", str(path), "--cloud", "aws", "--output", "json"], env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["applied"] is False and plan["summary"]["delete"] == 1
    assert {i["image_id"]: i["action"] for i in plan["images"]}[doomed] == "delete"
    assert doomed in images(region)

    table = run_prune(["-m", str(path), "--cloud", "aws"], env)
    assert "dry run" in table.stdout and "would delete" in table.stdout and doomed in table.stdout

    applied = run_prune(["-m", str(path), "--cloud", "aws", "--apply"], env)
    assert applied.returncode == 0, applied.stderr
    assert doomed not in images(region)
    assert "1 deleted" in applied.stdout and "0 failed" in applied.stdout

    doomed = publish(region, "5", 41, deprecated=LONG_AGO)
    audited = run_prune(["-m", str(path), "--cloud", "aws", "--apply", "--output", "json"], env)
    assert json.loads(audited.stdout)["summary"]["delete"] == 1
    assert f"aws us-east-1: delete {doomed}: ok" in audited.stderr  # the audit trail of a scheduled run


def test_cli_policy_file_and_bad_policy(retention_aws: str, tmp_path: Path) -> None:
    region = "us-east-1"
    for key, days in (("1", 10), ("2", 20), ("3", 30)):
        publish(region, key, days, deprecated=LONG_AGO)
    env = cli_env(tmp_path, retention_aws)
    path = matrix(tmp_path, [region], "retention:\n  keep_newest: 3\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text("retention:\n  keep_newest: 1\n  min_age_days: 25\n")
    result = run_prune(["-m", str(path), "--cloud", "aws", "--policy", str(policy), "--output", "json"], env)
    actions = sorted((i["reason"].split(" (")[0], i["action"]) for i in json.loads(result.stdout)["images"])
    assert actions == [("deprecated since 2026-01-01, grace over", "delete"), ("newest 1", "keep"),
                       ("too young", "keep")]

    policy.write_text("keep_newest: 0\n")
    bad = run_prune(["-m", str(path), "--cloud", "aws", "--policy", str(policy)], env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "keep_newest" in bad.stderr and "policy.yaml:1" in bad.stderr

    policy.write_text("keep_newst: 2\n")
    typo = run_prune(["-m", str(path), "--cloud", "aws", "--policy", str(policy)], env)
    assert typo.returncode == 2 and "keep_newst" in typo.stderr and len(typo.stderr.strip().splitlines()) == 1


def test_cli_exit_status_reports_a_failed_check(retention_aws: str, tmp_path: Path) -> None:
    doomed = publish("us-east-1", "1", 90, deprecated=LONG_AGO)
    for key, days in (("2", 1), ("3", 2), ("4", 3)):
        publish("us-east-1", key, days)
    path = matrix(tmp_path, ["us-east-1", "mars-north-1"])
    result = run_prune(["-m", str(path), "--cloud", "aws", "--output", "json"], cli_env(tmp_path, retention_aws))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert len(report["errors"]) == 1 and "unknown region 'mars-north-1'" in report["errors"][0]
    assert {i["image_id"]: i["action"] for i in report["images"]}[doomed] == "delete"  # the other region went on


def test_a_second_prune_of_the_same_account_refuses_or_waits(retention_aws: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, retention_aws)
    path = matrix(tmp_path, ["us-east-1"])
    key = f"aws:123456789012@{retention_aws}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGEBUILDER_CACHE", env["IMAGEBUILDER_CACHE"])
        with locks.exclusive(key):
            refused = run_prune(["-m", str(path), "--cloud", "aws"], env)
        assert refused.returncode == 3, refused.stderr
        assert "another prune of aws:123456789012" in refused.stderr and "--wait" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1

        holder = threading.Event()

        def hold() -> None:
            with locks.exclusive(key):
                holder.set()
                time.sleep(2)

        thread = threading.Thread(target=hold)
        thread.start()
        holder.wait()
        started = time.monotonic()
        waited = run_prune(["-m", str(path), "--cloud", "aws", "--wait"], env)
        thread.join()
    assert waited.returncode == 0, waited.stderr
    assert time.monotonic() - started >= 1.0
