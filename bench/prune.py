"""Plan a prune over 10,000 images in two regions of a moto server; print CPU, wall, requests.

The moto server runs in its own process, patched for the bench only (see
tests/test_retention_services.py): a direct tag lookup instead of moto's scan over every
tag of every resource, EnableImageDeprecation, and the 10,000 tagged images registered
in-process before it serves. Instances and launch templates (two versions each) that
reference some of the images are created over HTTP, as a user would.

Printed: our client's CPU time (this process only: the server is another process), the
wall time, the API requests (counted with a botocore before-send hook), the decisions, and
how many in-use images the plan would deprecate or delete (must be 0). Goals: < 1.2 s
client CPU for both regions, every region in one run, a few requests per region plus one per
launch template, and one DescribeSnapshots pass per region: the orphan sweep reuses the
snapshot ids the image listing holds instead of reading every snapshot again. ``--profile``
profiles the plan. ``--apply`` also carries the plan out and checks every in-use image survived.

For comparison (figures from the issue's trial, not measured here): aws-amicleaner 0.2.2
made 7 requests per region, handled one region per run, had no dry run, and would have
deleted the images that only launch templates referenced.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import boto3  # noqa: E402
from test_retention_services import aws_environment, patched_moto_server  # noqa: E402

from imagebuilder import retention  # noqa: E402
from imagebuilder.cli.prune import CloudRun, report  # noqa: E402
from imagebuilder.clouds.aws.settings import AwsSettings  # noqa: E402
from imagebuilder.clouds.aws.store import AwsImageStore  # noqa: E402
from imagebuilder.config import RetentionPolicy  # noqa: E402

REGIONS = ["us-east-1", "eu-west-1"]


def reference(region: str, instances: int, templates: int) -> tuple[set[str], set[str]]:
    """Launch instances and launch templates on some of the region's images; ids referenced, and those
    referenced by launch templates only."""
    ec2 = boto3.client("ec2", region_name=region)
    image_ids = sorted(i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"])
    used: set[str] = set()
    for index in range(instances):
        image_id = image_ids[(index * 37) % len(image_ids)]
        ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro")
        used.add(image_id)
    by_instances = set(used)
    for index in range(templates):
        first, second = image_ids[(index * 53 + 11) % len(image_ids)], image_ids[(index * 71 + 5) % len(image_ids)]
        template = ec2.create_launch_template(LaunchTemplateName=f"nodes-{index}",
                                              LaunchTemplateData={"ImageId": first, "InstanceType": "t3.micro"})
        ec2.create_launch_template_version(LaunchTemplateId=template["LaunchTemplate"]["LaunchTemplateId"],
                                           LaunchTemplateData={"ImageId": second, "InstanceType": "t3.micro"})
        used.update((first, second))
    return used, used - by_instances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=100, help="per region")
    parser.add_argument("--templates", type=int, default=25, help="per region")
    parser.add_argument("--apply", action="store_true", help="also apply the plan and check in-use images survive")
    parser.add_argument("--profile", action="store_true", help="print where the client's CPU time goes")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, patched_moto_server(
            Path(tmp), fast_tags=True, extra=["--seed-images", str(options.images), "--regions", ",".join(REGIONS)]
    ) as url:
        os.environ.update({k: v for k, v in aws_environment(url, Path(tmp)).items() if k.startswith("AWS_")})
        os.environ["IMAGEBUILDER_CACHE"] = str(Path(tmp) / "cache")
        started = time.perf_counter()
        references = {region: reference(region, options.instances, options.templates) for region in REGIONS}
        used = {region: found[0] for region, found in references.items()}
        template_only = set().union(*(found[1] for found in references.values()))
        print(f"set-up: {options.images} images in {len(REGIONS)} regions, {options.instances} instances and "
              f"{options.templates} launch templates (2 versions) per region, in {time.perf_counter() - started:.1f} s")

        store = AwsImageStore(AwsSettings(regions=REGIONS))
        requests: Counter[str] = Counter()
        store.session.events.register("before-send", lambda request, **_: requests.update(
            [request.headers.get("X-Amz-Target", b"").decode() or _action(request.body)]))
        profiler = cProfile.Profile(time.process_time) if options.profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        key = store.lock_key()  # as the CLI does: one STS call
        run_plan = retention.gather(store)
        decisions = retention.decide(run_plan.records, run_plan.in_use, RetentionPolicy(),
                                     unknown_reasons=run_plan.unknown_reasons)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        before_sharing = sum(requests.values())
        shared_cpu, shared_wall = time.process_time(), time.perf_counter()
        decisions = retention.keep_shared(decisions, store, RetentionPolicy())
        shared_cpu, shared_wall = time.process_time() - shared_cpu, time.perf_counter() - shared_wall
        sharing_requests = sum(requests.values()) - before_sharing

        all_used = set().union(*used.values())
        touched_in_use = [d for d in decisions if d.record.image_id in all_used and d.action is not retention.Action.KEEP]
        counts = Counter(d.action.value for d in decisions)
        total = before_sharing  # the plan's own requests; the sharing check is counted on its own line
        print(f"plan ({key.split('@')[0]}): {len(decisions)} images, {dict(counts)}, "
              f"{len(run_plan.orphans)} orphans, errors: {run_plan.errors or 'none'}")
        print(f"client CPU: {cpu:.2f} s (goal < 1.2 s for both regions)   wall: {wall:.2f} s   "
              f"requests: {total} for {len(REGIONS)} regions and {options.templates * len(REGIONS)} launch templates "
              f"({(total - options.templates * len(REGIONS)) / len(REGIONS):.1f} per region + 1 per template)")
        print(f"sharing check of the {sum(1 for d in decisions if d.action is not retention.Action.KEEP) or 'no'} "
              f"candidates (one DescribeImageAttribute each, unless prune_shared): {sharing_requests} requests, "
              f"client CPU {shared_cpu:.2f} s, wall {shared_wall:.2f} s")
        for output_format in ("table", "json"):
            render = time.process_time()
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                report([CloudRun(run_plan, decisions)], RetentionPolicy(), False, output_format)
            print(f"{output_format} output of {len(decisions)} rows: {time.process_time() - render:.2f} s client CPU "
                  f"({len(printed.getvalue()) // 1024} KiB)")
        print("side by side (aws-amicleaner from the issue's trial, not measured here): "
              f"imagebuilder {cpu:.2f} s CPU, {total} requests for {len(REGIONS)} regions; "
              "aws-amicleaner 1.2 s CPU and 7 requests per region, one region per run")
        print("requests by call: " + ", ".join(f"{name} {n}" for name, n in sorted(requests.items())))
        print(f"snapshot passes: {requests['DescribeSnapshots']} DescribeSnapshots for {len(REGIONS)} regions "
              "(the orphan sweep's one pass; snapshots the images name are skipped at their id)")
        print(f"in-use images the plan would deprecate or delete: {len(touched_in_use)} (must be 0); "
              f"in-use images kept: {sum(1 for d in decisions if d.reason.startswith('in use by'))} "
              f"of {len(all_used)} referenced")
        template_only_touched = [d for d in decisions if d.record.image_id in template_only
                                 and d.action is not retention.Action.KEEP]
        print(f"images referenced only by launch templates: {len(template_only)}, of which the plan touches "
              f"{len(template_only_touched)}")
        print("for comparison (the issue's trial, not measured here): aws-amicleaner 0.2.2: 7 requests per region, "
              "one region per run, no dry run, deletes images only launch templates reference")
        if options.apply:
            started = time.perf_counter()
            outcomes = retention.apply(decisions, store)
            remaining = {i["ImageId"] for region in REGIONS for i in boto3.client("ec2", region_name=region)
                         .describe_images(Owners=["self"], IncludeDeprecated=True)["Images"]}
            print(f"apply: {len(outcomes)} actions in {time.perf_counter() - started:.1f} s, "
                  f"{sum(1 for o in outcomes if not o.ok)} failed; in-use images deleted: {len(all_used - remaining)}")
        if touched_in_use:
            sys.exit(1)


def _action(body: object) -> str:
    text = body.decode() if isinstance(body, bytes) else str(body or "")
    for part in text.split("&"):
        if part.startswith("Action="):
            return part[len("Action="):]
    return "?"


if __name__ == "__main__":
    main()
