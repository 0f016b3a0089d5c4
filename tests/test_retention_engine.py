"""The policy engine, by property: over any mix of images, what it may never do and what it must keep."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from services import sample_metadata

from imagebuilder.clouds import ImageRecord
from imagebuilder.config import RetentionPolicy
from imagebuilder.retention import (
    Action,
    Decision,
    built_at,
    decide,
    group_key,
    newest_first_key,
    summarize,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
# What a real account holds besides Packer's stamps: unix seconds (0, and a plausible one),
# a YYYYMMDDhhmm, milliseconds, huge numbers, ISO dates, words, empty, a date that does not exist.
MALFORMED_STAMPS = ["0", "1764064800", "202511251000", "1764064800000", "9" * 40, "2025-11-25T10:00:00Z",
                    "yesterday", "", "20251345250000", "30001125100000", "20101125100000", "２０２５１１２５１０００００"]
GROUPS = [("us-east-1", "debian-12", "1.31", "amd64"), ("us-east-1", "debian-12", "1.32", "amd64"),
          ("eu-west-1", "debian-12", "1.31", "amd64"), ("us-east-1", "ubuntu-2204", "1.31", "arm64")]


@st.composite
def images(draw: st.DrawFn) -> tuple[ImageRecord, list[str] | None]:
    index = draw(st.integers(0, 10**9))
    region, os_id, minor, arch = draw(st.sampled_from(GROUPS))
    age = draw(st.floats(0, 120))
    ours = draw(st.booleans().map(lambda b: b or draw(st.integers(0, 9)) > 0))  # mostly ours
    metadata = sample_metadata(os=os_id, kubernetes_minor=minor, arch=arch, build_key=f"{index:064x}",
                               build_timestamp=draw(st.one_of(
                                   st.just((NOW - timedelta(days=age)).strftime("%Y%m%d%H%M%S")),
                                   st.sampled_from(MALFORMED_STAMPS)))) if ours else None
    deprecated_days = draw(st.one_of(st.none(), st.floats(-1, 60)))
    tags = metadata.to_tags() if metadata else {}
    if draw(st.integers(0, 9)) == 0:
        tags["imagebuilder-protect"] = draw(st.sampled_from(["", "true", "false"]))
    record = ImageRecord(
        cloud="aws", region=region, image_id=f"ami-{index:017x}", name=f"image-{index}",
        created_at=NOW - timedelta(days=draw(st.floats(0, 120))), metadata=metadata,
        state=draw(st.sampled_from(["available"] * 6 + ["pending", "failed"])),
        deprecated_at=None if deprecated_days is None else NOW - timedelta(days=deprecated_days), tags=tags)
    usage = draw(st.sampled_from([[], [], [], ["i-0123 (running)"], None]))
    return record, usage


policies = st.builds(RetentionPolicy, keep_newest=st.integers(1, 4), min_age_days=st.integers(0, 30),
                     deprecate_grace_days=st.integers(0, 20))
inventories = st.lists(images(), max_size=40, unique_by=lambda pair: pair[0].image_id)


def run(pairs: list[tuple[ImageRecord, list[str] | None]], policy: RetentionPolicy,
        now: datetime = NOW) -> list[Decision]:
    return decide([record for record, _ in pairs], {record.image_id: usage for record, usage in pairs}, policy, now)


@settings(max_examples=300, deadline=None)
@given(inventories, policies)
def test_never_touches_what_must_be_kept(pairs: list[tuple[ImageRecord, list[str] | None]],
                                         policy: RetentionPolicy) -> None:
    usage = {record.image_id: used for record, used in pairs}
    for decision in run(pairs, policy):
        record = decision.record
        if decision.action is Action.KEEP:
            continue
        assert record.metadata is not None
        assert policy.protect_tag not in record.tags
        assert usage[record.image_id] == []  # not in use, and the check was made
        assert record.state not in ("pending",)
        assert NOW - built_at(record) >= timedelta(days=policy.min_age_days)
        if decision.action is Action.DELETE:
            assert record.deprecated_at is not None
            assert record.deprecated_at + timedelta(days=policy.deprecate_grace_days) <= NOW
        else:
            assert record.deprecated_at is None


@settings(max_examples=300, deadline=None)
@given(inventories, policies)
def test_every_group_keeps_its_newest(pairs: list[tuple[ImageRecord, list[str] | None]],
                                      policy: RetentionPolicy) -> None:
    decisions = run(pairs, policy)
    groups: dict[tuple[str, ...], list[Decision]] = {}
    for decision in decisions:
        key = group_key(decision.record)
        if key is not None and decision.record.state == "available" and built_at(decision.record, NOW):
            groups.setdefault(key, []).append(decision)
    for members in groups.values():
        members.sort(key=lambda d: newest_first_key(d.record, built_at(d.record, NOW)), reverse=True)
        newest = members[:min(policy.keep_newest, len(members))]
        assert all(d.action is Action.KEEP for d in newest)
        assert len(newest) == min(policy.keep_newest, len(members))


@settings(max_examples=300, deadline=None)
@given(inventories, policies.filter(lambda p: p.deprecate_grace_days > 0))
def test_a_rerun_after_applying_changes_nothing(pairs: list[tuple[ImageRecord, list[str] | None]],
                                                policy: RetentionPolicy) -> None:
    """Idempotent: a second run at once finds nothing to do (with no grace at all it would delete what the
    first run deprecated: that is what a grace of 0 days asks for)."""
    first = run(pairs, policy)
    after: list[tuple[ImageRecord, list[str] | None]] = []
    usage = {record.image_id: used for record, used in pairs}
    for decision in first:
        record = decision.record
        if decision.action is Action.DELETE:
            continue
        if decision.action is Action.DEPRECATE:
            record = replace(record, deprecated_at=NOW)
        after.append((record, usage[record.image_id]))
    second = run(after, policy)
    assert all(d.action is Action.KEEP for d in second)
    kept_first = {d.record.image_id: d.reason for d in first if d.action is Action.KEEP}
    assert {d.record.image_id: d.reason for d in second if d.record.image_id in kept_first} == kept_first


@settings(max_examples=100, deadline=None)
@given(inventories, policies)
def test_deletion_takes_the_grace_period_after_deprecation(pairs: list[tuple[ImageRecord, list[str] | None]],
                                                           policy: RetentionPolicy) -> None:
    """Run daily from now on: nothing is deleted before it has been deprecated for the grace period."""
    deprecated_on: dict[str, datetime] = {}
    state = list(pairs)
    for day in range(0, policy.deprecate_grace_days + 2):
        now = NOW + timedelta(days=day)
        decisions = run(state, policy, now)
        next_state = []
        for decision, (_, used) in zip(decisions, state):
            record = decision.record
            if decision.action is Action.DELETE:
                since = deprecated_on.get(record.image_id, record.deprecated_at)
                assert since is not None and since + timedelta(days=policy.deprecate_grace_days) <= now
                continue
            if decision.action is Action.DEPRECATE:
                deprecated_on[record.image_id] = now
                record = replace(record, deprecated_at=now)
            next_state.append((record, used))
        state = next_state


def test_reasons_read_as_the_issue_shows_them() -> None:
    policy = RetentionPolicy()

    def image(n: int, age: float, **changes: object) -> ImageRecord:
        meta = sample_metadata(build_key=f"{n:064x}",
                               build_timestamp=(NOW - timedelta(days=age)).strftime("%Y%m%d%H%M%S"))
        base = ImageRecord(cloud="aws", region="us-east-1", image_id=f"ami-{n}", name=f"i{n}", created_at=NOW,
                           metadata=meta, tags=meta.to_tags())
        return replace(base, **changes)  # type: ignore[arg-type]

    records = [image(1, 1), image(2, 2), image(3, 3), image(4, 4), image(5, 30), image(6, 31),
               image(7, 32, deprecated_at=NOW - timedelta(days=2)), image(8, 33, deprecated_at=NOW - timedelta(days=20)),
               image(9, 34), image(10, 35, metadata=None)]
    usage: dict[str, list[str] | None] = {f"ami-{n}": [] for n in range(1, 11)}
    usage["ami-6"] = ["i-123 (running)"]
    usage["ami-9"] = None
    decisions = decide(records, usage, policy, NOW, unknown_reasons={"ami-9": "AccessDenied on DescribeInstances"})
    reasons = [(d.action.value, d.reason.split(" (")[0]) for d in decisions]
    assert reasons == [
        ("keep", "newest 3"), ("keep", "newest 3"), ("keep", "newest 3"), ("keep", "too young"),
        ("deprecate", "older than the newest 3, not in use; delete after 14d"), ("keep", "in use by i-123"),
        ("keep", "deprecated, grace until " + f"{NOW + timedelta(days=12):%Y-%m-%d %H:%M}"),
        ("delete", "deprecated since " + f"{NOW - timedelta(days=20):%Y-%m-%d}, grace over"),
        ("keep", "in-use check failed: AccessDenied on DescribeInstances"),
        ("keep", "not ours: no complete imagebuilder metadata, never touched")]
    summary = summarize(decisions, [], [])
    assert (summary.keep, summary.deprecate, summary.delete, summary.unchecked) == (8, 1, 1, 1)


def test_the_clouds_own_deletion_protection_is_honoured() -> None:
    meta = sample_metadata(build_timestamp=(NOW - timedelta(days=90)).strftime("%Y%m%d%H%M%S"))
    records = [ImageRecord(cloud="openstack", region="default", image_id=f"img-{n}", name=f"i{n}", created_at=NOW,
                           metadata=replace(meta, build_key=f"{n:064x}"), deprecated_at=NOW - timedelta(days=60),
                           extra={"protected": n == 0}) for n in range(5)]
    records[1:4] = [replace(r, metadata=replace(r.metadata, build_timestamp=NOW.strftime("%Y%m%d%H%M%S")))
                    for r in records[1:4]]  # three newer ones take the newest slots
    decided = {d.record.image_id: d for d in decide(records, {r.image_id: [] for r in records}, RetentionPolicy(), NOW)}
    assert decided["img-0"].reason == "protected (the cloud's deletion protection)"
    assert decided["img-4"].action is Action.DELETE


@settings(max_examples=300, deadline=None)
@given(inventories, policies)
def test_an_untrusted_build_timestamp_is_kept_with_its_reason(pairs: list[tuple[ImageRecord, list[str] | None]],
                                                              policy: RetentionPolicy) -> None:
    for decision in run(pairs, policy):
        record = decision.record
        if record.metadata is not None and built_at(record, NOW) is None:
            assert decision.action is Action.KEEP
            assert decision.reason.startswith(("build timestamp", "no build timestamp", "not ours", "protected",
                                               "in use", "in-use check failed"))


def test_malformed_stamps_neither_count_nor_displace() -> None:
    """Three good images and every malformed stamp in one group: the good three stay the newest 3."""
    good = [(NOW - timedelta(days=days)).strftime("%Y%m%d%H%M%S") for days in (30, 40, 50, 60)]
    records = [ImageRecord(cloud="aws", region="us-east-1", image_id=f"ami-{index:03d}", name=f"i{index}",
                           created_at=NOW - timedelta(days=1), state="available",
                           metadata=sample_metadata(build_key=f"{index:064x}", build_timestamp=stamp),
                           tags={}) for index, stamp in enumerate(good + MALFORMED_STAMPS)]
    decisions = {d.record.image_id: d for d in
                 decide(records, {r.image_id: [] for r in records}, RetentionPolicy(), NOW)}
    assert [decisions[f"ami-{i:03d}"].reason for i in range(3)] == ["newest 3"] * 3
    assert decisions["ami-003"].action is Action.DEPRECATE
    for index, stamp in enumerate(MALFORMED_STAMPS, start=len(good)):
        decision = decisions[f"ami-{index:03d}"]
        assert decision.action is Action.KEEP, stamp
        assert "build timestamp" in decision.reason and "not understood" in decision.reason or not stamp
    assert decisions["ami-004"].reason.startswith("build timestamp '0' not understood")
