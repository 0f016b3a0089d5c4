"""`prune --apply` killed with SIGKILL at points spread over its run, then run again, against a moto server.

After every kill: nothing the policy keeps is gone and in-use images remain. After the
re-run: the cloud is in exactly the state one uninterrupted run leaves (compared by image
name, as ids differ between seeds), no orphaned snapshot of ours is left, and a third run
finds nothing to do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from services import reset_moto, sample_metadata
from test_retention_aws import LONG_AGO, ROOT, cli_env, client, matrix, stamp
from test_retention_services import retention_moto_url  # noqa: F401,F811 (fixture)

# The kills are spread evenly over the apply's actions (first to last), so 10 trials cover its
# stages as well as 20 random ones did, in half the suite time.
TRIALS = 10
REGION = "us-east-1"


def seed() -> dict[str, str]:
    """Name -> role: 3 newest, 2 in use, 1 protected, 5 to deprecate, 10 to delete, and an orphan snapshot.

    Registered first, then described once for their snapshots, then tagged as publish tags them.
    """
    ec2 = client("ec2", REGION)
    plan: list[tuple[str, float, str, dict[str, Any]]] = [(k, 1 + i, "newest", {}) for i, k in enumerate("abc")]
    plan += [("d", 50, "in-use", {"deprecated": LONG_AGO}), ("e", 51, "in-use", {"deprecated": LONG_AGO}),
             ("f", 52, "protected", {"deprecated": LONG_AGO, "extra_tags": {"imagebuilder-protect": "yes"}})]
    plan += [(f"1{i}", 60 + i, "deprecate", {}) for i in range(5)]
    plan += [(f"2{i}", 80 + i, "delete", {"deprecated": LONG_AGO}) for i in range(10)]
    plan += [("9", 99, "orphan", {})]
    ids = {key: ec2.register_image(Name=f"ib-debian-12-1.31-{key}", RootDeviceName="/dev/xvda")["ImageId"]
           for key, *_ in plan}
    described = {i["ImageId"]: i for i in ec2.describe_images(ImageIds=list(ids.values()))["Images"]}
    for key, days, _, options in plan:
        image_id = ids[key]
        tags = tags_for(key, days)
        tags.update(options.get("extra_tags", {}))
        snapshots = [m["Ebs"]["SnapshotId"] for m in described[image_id]["BlockDeviceMappings"]]
        ec2.create_tags(Resources=[image_id, *snapshots], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        if options.get("deprecated"):
            ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt=options["deprecated"])
    ec2.run_instances(ImageId=ids["d"], MinCount=1, MaxCount=1)
    ec2.create_launch_template(LaunchTemplateName="nodes", LaunchTemplateData={"ImageId": ids["e"]})
    ec2.deregister_image(ImageId=ids["9"])  # an earlier delete killed after deregistering: its snapshot remains
    return {f"ib-debian-12-1.31-{key}": role for key, _, role, _ in plan if role != "orphan"}


def tags_for(key: str, days: float) -> dict[str, str]:
    return sample_metadata(build_key=key * 32, cell="aws-debian-12-k8s-1.31", build_timestamp=stamp(days)).to_tags()


def state() -> dict[str, Any]:
    ec2 = client("ec2", REGION)
    found = ec2.describe_images(Owners=["self"], IncludeDeprecated=True)["Images"]
    referenced = {m["Ebs"]["SnapshotId"] for i in found for m in i.get("BlockDeviceMappings", [])}
    ours = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "tag-key",
                                                              "Values": ["imagebuilder-build-key"]}])["Snapshots"]
    return {
        "images": sorted(i["Name"] for i in found),
        "deprecated": sorted(i["Name"] for i in found if i.get("DeprecationTime")),
        "orphans": sorted(s["SnapshotId"] for s in ours if s["SnapshotId"] not in referenced),
    }


def prune(env: dict[str, str], path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "imagebuilder.cli", "prune", "-m", str(path), "--cloud", "aws",
                             "--apply", "--output", "json", *extra], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_prune_survives_sigkill_anywhere_and_converges(retention_moto_url: str, tmp_path: Path,
                                                       monkeypatch: Any) -> None:
    env = cli_env(tmp_path, retention_moto_url)
    for name, value in env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    path = matrix(tmp_path, [REGION])

    reset_moto(retention_moto_url)
    roles = seed()
    dry = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "prune", "-m", str(path), "--cloud", "aws",
                          "--output", "json"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    single = prune(env, path)
    out, err = single.communicate(timeout=120)
    assert single.returncode == 0, err
    actions = len([line for line in err.splitlines() if line.startswith("aws ")])
    assert actions > 2, err
    reference = state()
    must_stay = sorted(name for name, role in roles.items() if role != "delete")
    assert reference["images"] == must_stay
    assert reference["deprecated"] == sorted(n for n, r in roles.items() if r in ("deprecate", "in-use", "protected"))
    assert reference["orphans"] == []

    targets = sorted({round(i * (actions - 1) / (TRIALS - 1)) for i in range(TRIALS)})
    interrupted = 0
    for trial, target in enumerate(targets):
        reset_moto(retention_moto_url)
        seed()
        before = state()
        process = prune(env, path)
        # Kill after `target` of the apply's actions (its audit lines on stderr), so the kill lands
        # at that point of the run however loaded the machine is; 0 kills before any action.
        seen = 0
        while seen < target and process.stderr is not None and process.stderr.readline():
            seen += 1
        process.kill()
        process.communicate()
        killed = state()
        assert set(must_stay) <= set(killed["images"]), f"trial {trial}: a kept image is gone"
        interrupted += killed != before and killed != reference

        rerun = prune(env, path)
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, f"trial {trial}: {err}"
        assert state() == reference, f"trial {trial}"
        third = json.loads(subprocess.run(
            [sys.executable, "-m", "imagebuilder.cli", "prune", "-m", str(path), "--cloud", "aws", "--output",
             "json"], cwd=ROOT, env=env, capture_output=True, text=True).stdout)["summary"] if trial % 5 == 0 else None
        if third is not None:
            assert (third["deprecate"], third["delete"], third["orphans"]) == (0, 0, 0)
    assert interrupted >= len(targets) // 4, f"only {interrupted} of {len(targets)} kills landed mid-apply"
