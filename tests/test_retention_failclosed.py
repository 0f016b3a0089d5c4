"""Retention fails closed on what it cannot trust (issue 18), against the moto server over HTTP:
malformed build timestamps, endpoints answering HTML or nothing parseable, invalid endpoint
URLs, policy values of the wrong type or out of range, and the scope of `--cloud aws`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_retention_aws import cli_env, images, matrix, publish, run_prune, stamp, store
from test_retention_services import aws_environment, retention_aws, retention_moto_url  # noqa: F401,F811 (fixtures)

from imagebuilder import retention
from imagebuilder.cli.prune import prune
from imagebuilder import retry as retry_module
from imagebuilder.clouds.aws import store as aws_module
from imagebuilder.config import RetentionPolicy
from imagebuilder.metadata import tag_key

TIMESTAMP = tag_key("build_timestamp")
# Each way a real account's tag goes wrong: unix 0 (1970), YYYYMMDDhhmm (read as seconds: year 8390),
# milliseconds and huge numbers (once raised and aborted every region), ISO, words, empty.
MALFORMED = ["0", "202511251000", "1764064800000", "9" * 30, "2025-11-25T10:00:00Z", "yesterday", "",
             "20991231000000", "20140101000000"]


def test_malformed_timestamps_are_kept_with_reason_and_do_not_displace_the_newest(retention_aws: str) -> None:
    region = "us-east-1"
    good = {publish(region, key, days): days for key, days in (("1", 30), ("2", 40), ("3", 50), ("4", 60))}
    bad = {}
    for index, value in enumerate(MALFORMED):
        image_id = publish(region, chr(ord("a") + index), 70)
        aws_module.boto3.client("ec2", region_name=region).create_tags(
            Resources=[image_id], Tags=[{"Key": TIMESTAMP, "Value": value}])
        bad[image_id] = value
    other = publish("eu-west-1", "z", 90, deprecated="2026-01-01T00:00:00.000Z")  # another region goes on

    inventory = retention.gather(store())
    assert not inventory.errors
    decisions = {d.record.image_id: d for d in retention.decide(inventory.records, inventory.in_use,
                                                                 RetentionPolicy(), unknown_reasons={})}
    newest = sorted(good, key=good.get)[:3]
    assert [decisions[i].reason for i in newest] == ["newest 3"] * 3
    assert decisions[sorted(good, key=good.get)[3]].action is retention.Action.DEPRECATE
    for image_id, value in bad.items():
        assert decisions[image_id].action is retention.Action.KEEP, value
        expected = f"build timestamp '{value}' not understood" if value else "no build timestamp"
        assert decisions[image_id].reason.startswith(expected), decisions[image_id].reason
    assert decisions[other].reason == "newest 3"  # the other region was listed and decided too
    assert decisions[other].to_json()["built_at"]
    assert decisions[next(iter(bad))].to_json()["built_at"] is None


def test_the_cli_completes_and_shows_the_reason(retention_aws: str, tmp_path: Path) -> None:
    region = "us-east-1"
    for key, days in (("1", 30), ("2", 40), ("3", 50)):
        publish(region, key, days)
    odd = publish(region, "4", 60)
    aws_module.boto3.client("ec2", region_name=region).create_tags(
        Resources=[odd], Tags=[{"Key": TIMESTAMP, "Value": "1764064800000"}])
    result = run_prune(["-m", str(matrix(tmp_path, [region])), "--cloud", "aws"], cli_env(tmp_path, retention_aws))
    assert result.returncode == 0, result.stderr
    assert "build timestamp '1764064800000' not understood" in result.stdout
    assert "3 kept" not in result.stdout and "4 images: 4 kept" in result.stdout


# -- endpoints that do not answer as AWS ------------------------------------------------------------


class _ErrorPage(BaseHTTPRequestHandler):
    hits = 0
    status = 503
    body = b"<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head><body>down</body></html>"

    def _answer(self) -> None:
        type(self).hits += 1
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def error_page() -> Iterator[str]:
    _ErrorPage.hits = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ErrorPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _cli(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr(retry_module.random, "uniform", lambda a, b: 0.0)  # retries without the backoff's wait
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(prune, args, catch_exceptions=True)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("status", "body"), [
    (503, _ErrorPage.body), (503, b""), (200, b""), (502, b"<html><body>Bad gateway</body></html>")])
def test_an_error_page_endpoint_is_retried_then_one_line_per_region(status: int, body: bytes, error_page: str,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ErrorPage, "status", status)
    monkeypatch.setattr(_ErrorPage, "body", body)
    env = aws_environment(error_page, tmp_path)
    path = matrix(tmp_path, ["us-east-1", "eu-west-1"])
    code, out, err = _cli(["-m", str(path), "--apply", "--output", "json"], env, monkeypatch)
    assert code != 0 and "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2, err  # one per region, nothing else
    assert sorted(region for region in ("us-east-1", "eu-west-1") for line in lines
                  if f"aws {region}: describe_images" in line) == ["eu-west-1", "us-east-1"], err
    assert all("| fix:" in line and "AWS_ENDPOINT_URL" in line for line in lines), err
    assert _ErrorPage.hits > 4  # retried


def test_an_html_503_is_retried_by_the_store(error_page: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in aws_environment(error_page, tmp_path).items():
        monkeypatch.setenv(name, value)
    aws = store(["us-east-1"])
    aws.max_attempts = 3
    with pytest.raises(aws_module.CloudError) as caught:
        aws.call("ec2", "us-east-1", "describe_images", Owners=["self"])
    assert "\n" not in str(caught.value) and "| fix:" in str(caught.value)
    assert _ErrorPage.hits >= 3  # ours, each perhaps with botocore's own


@pytest.mark.parametrize("url", ["not a url", "ftp//nowhere", "http://[::1"])
def test_an_invalid_endpoint_url_is_one_line(url: str, tmp_path: Path) -> None:
    env = aws_environment(url, tmp_path)
    result = run_prune(["--cloud", "aws", "--region", "us-east-1"], env, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "AWS_ENDPOINT_URL" in result.stderr


# -- policy types and bounds ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "field"), [
    ("keep_newest: true\n", "keep_newest"),
    ("keep_newest: 2.5\n", "keep_newest"),
    ("min_age_days: 1000000000\n", "min_age_days"),
    ("deprecate_grace_days: 99999999999999999999999\n", "deprecate_grace_days"),
    ("keep_newest: 100000\n", "keep_newest"),
    ("protect_tag: \"\"\n", "protect_tag"),
    ("protect_tag: \"  \"\n", "protect_tag"),
    ("prune_shared: 1\n", "prune_shared"),
    ("prune_shared: \"yes\"\n", "prune_shared"),
])
def test_bad_policy_values_are_one_line_with_file_field_and_fix(text: str, field: str, tmp_path: Path,
                                                                retention_aws: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    result = run_prune(["--cloud", "aws", "--region", "us-east-1", "--policy", str(policy)],
                       cli_env(tmp_path, retention_aws))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "policy.yaml:1" in lines[0] and f"{field}:" in lines[0] and lines[0].endswith(")"), lines[0]  # (the fix)


def test_a_matrix_policy_overflow_is_one_line(tmp_path: Path, retention_aws: str) -> None:
    path = matrix(tmp_path, ["us-east-1"], "retention: {min_age_days: 1000000000}\n")
    result = run_prune(["-m", str(path), "--cloud", "aws"], cli_env(tmp_path, retention_aws))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "min_age_days" in result.stderr


def test_policy_types_in_the_model() -> None:
    with pytest.raises(ValueError):
        RetentionPolicy.model_validate({"keep_newest": True})
    with pytest.raises(ValueError):
        RetentionPolicy.model_validate({"protect_tag": ""})
    assert RetentionPolicy.model_validate({"keep_newest": 5}).keep_newest == 5


# -- scope ----------------------------------------------------------------------------------------


def test_cloud_aws_without_a_matrix_names_its_regions_and_region_chooses(retention_aws: str,
                                                                          tmp_path: Path) -> None:
    env = cli_env(tmp_path, retention_aws)
    publish("eu-west-1", "1", 90, deprecated="2026-01-01T00:00:00.000Z")
    for key in ("2", "3", "4"):
        publish("eu-west-1", key, 1)
    default = run_prune(["--cloud", "aws", "-m", str(tmp_path / "none.yaml")], env)
    assert default.returncode == 2  # -m naming a missing file is an error
    bare = subprocess_in(tmp_path, ["--cloud", "aws", "--output", "json"], env)
    assert "only its default regions are pruned: us-east-1" in bare.stderr and "--region" in bare.stderr
    assert json.loads(bare.stdout)["summary"]["images"] == 0
    chosen = subprocess_in(tmp_path, ["--cloud", "aws", "--region", "eu-west-1", "--output", "json"], env)
    assert chosen.returncode == 0, chosen.stderr
    assert "default regions" not in chosen.stderr and json.loads(chosen.stdout)["summary"]["images"] == 4
    wrong = subprocess_in(tmp_path, ["--cloud", "local", "--region", "eu-west-1"], env)
    assert wrong.returncode == 2 and "--region" in wrong.stderr and "Traceback" not in wrong.stderr


def subprocess_in(cwd: Path, args: list[str], env: dict[str, str]):  # type: ignore[no-untyped-def]
    """prune run where no matrix.yaml exists."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", "prune", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_timeout_stops_starting_work_and_reports_it(retention_aws: str, tmp_path: Path) -> None:
    deadline = retention.Deadline.after(1e-9)
    inventory = retention.gather(store(), deadline=deadline)
    assert len(inventory.errors) == 2 and all("--timeout" in e for e in inventory.errors)
    doomed = publish("us-east-1", "1", 90, deprecated="2026-01-01T00:00:00.000Z")
    publish("us-east-1", "2", 1)
    live = retention.gather(store(["us-east-1"]))
    decisions = retention.decide(live.records, live.in_use, RetentionPolicy(keep_newest=1, min_age_days=0))
    assert {d.record.image_id: d.action for d in decisions}[doomed] is retention.Action.DELETE
    outcomes = retention.apply(decisions, live.store, deadline=deadline)
    assert outcomes and all("--timeout" in (o.error or "") for o in outcomes)
    assert doomed in images("us-east-1")


def test_stamp_helper_is_the_schema_format() -> None:
    assert len(stamp(1)) == 14


# -- re-check before each destructive step, and sharing -------------------------------------------


def _plan(aws: aws_module.AwsImageStore, policy: RetentionPolicy) -> list[retention.Decision]:
    inventory = retention.gather(aws)
    decisions = retention.decide(inventory.records, inventory.in_use, policy,
                                 unknown_reasons=inventory.unknown_reasons)
    return retention.keep_shared(decisions, aws, policy)


def test_an_instance_launched_between_plan_and_apply_keeps_the_image(retention_aws: str) -> None:
    region = "us-east-1"
    for key, days in (("1", 1), ("2", 2), ("3", 3)):
        publish(region, key, days)
    doomed = publish(region, "4", 90, deprecated="2026-01-01T00:00:00.000Z")
    to_deprecate = publish(region, "5", 80)
    gone = publish(region, "6", 95, deprecated="2026-01-01T00:00:00.000Z")
    aws = store([region])
    decisions = _plan(aws, RetentionPolicy())
    actions = {d.record.image_id: d.action for d in decisions}
    assert actions[doomed] is retention.Action.DELETE and actions[to_deprecate] is retention.Action.DEPRECATE
    ec2 = aws_module.boto3.client("ec2", region_name=region)
    ec2.run_instances(ImageId=doomed, MinCount=1, MaxCount=1)  # after the plan's in-use scan
    ec2.create_launch_template(LaunchTemplateName="late", LaunchTemplateData={"ImageId": to_deprecate})
    outcomes = {o.subject: o for o in retention.apply(decisions, aws)}
    assert outcomes[doomed].ok and outcomes[doomed].kept and "in use since the plan by instance" in outcomes[doomed].kept
    assert outcomes[to_deprecate].kept and "launch template" in outcomes[to_deprecate].kept
    assert outcomes[gone].done and gone not in images(region)
    left = images(region)
    assert doomed in left and "DeprecationTime" not in left[to_deprecate]
    summary = retention.summarize(decisions, [], list(outcomes.values()))
    assert summary.kept_at_recheck == 2 and summary.failed == 0


def test_a_failed_recheck_keeps_the_image_and_fails(retention_aws: str) -> None:
    region = "us-east-1"
    for key, days in (("1", 1), ("2", 2), ("3", 3)):
        publish(region, key, days)
    doomed = publish(region, "4", 90, deprecated="2026-01-01T00:00:00.000Z")
    aws = store([region])
    decisions = _plan(aws, RetentionPolicy())
    from test_retention_aws import denying_session

    denied = store([region], session=denying_session("ec2.DescribeInstances"))
    outcomes = retention.apply(decisions, denied)
    assert [o.error for o in outcomes if o.subject == doomed][0].startswith("kept: re-check failed")
    assert doomed in images(region)


def test_an_image_shared_with_another_account_is_kept_and_says_with_whom(retention_aws: str,
                                                                        tmp_path: Path) -> None:
    region = "us-east-1"
    for key, days in (("1", 1), ("2", 2), ("3", 3)):
        publish(region, key, days)
    shared = publish(region, "4", 90, deprecated="2026-01-01T00:00:00.000Z")
    ec2 = aws_module.boto3.client("ec2", region_name=region)
    ec2.modify_image_attribute(ImageId=shared, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    decisions = {d.record.image_id: d for d in _plan(store([region]), RetentionPolicy())}
    assert decisions[shared].action is retention.Action.KEEP
    assert decisions[shared].reason.startswith("shared with account 111122223333")
    env = cli_env(tmp_path, retention_aws)
    kept = run_prune(["-m", str(matrix(tmp_path, [region])), "--cloud", "aws", "--apply"], env)
    assert kept.returncode == 0, kept.stderr
    assert shared in images(region) and "shared with account 111122223333" in kept.stdout
    pruned = run_prune(["-m", str(matrix(tmp_path, [region], "retention: {prune_shared: true}\n")),
                        "--cloud", "aws", "--apply"], env)
    assert pruned.returncode == 0, pruned.stderr
    assert shared not in images(region)


def test_an_image_shared_between_plan_and_apply_is_kept(retention_aws: str) -> None:
    region = "us-east-1"
    for key, days in (("1", 1), ("2", 2), ("3", 3)):
        publish(region, key, days)
    doomed = publish(region, "4", 90, deprecated="2026-01-01T00:00:00.000Z")
    aws = store([region])
    decisions = _plan(aws, RetentionPolicy())
    aws_module.boto3.client("ec2", region_name=region).modify_image_attribute(
        ImageId=doomed, LaunchPermission={"Add": [{"UserId": "444455556666"}]})
    outcomes = {o.subject: o for o in retention.apply(decisions, aws)}
    assert outcomes[doomed].kept and "account 444455556666" in outcomes[doomed].kept
    assert doomed in images(region)
