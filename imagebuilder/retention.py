"""Retention: which published images to keep, deprecate or delete, and doing it safely.

``decide`` is the policy engine, pure: records + what uses them + the policy + a clock in,
one ``Decision`` per image out. The rules, first match wins:

1. no (complete) imagebuilder metadata        -> keep, untouched ("not ours")
2. carries the policy's protect tag, or the
   cloud's own deletion protection is on       -> keep ("protected")
3. in use (instance, template, server, ...)   -> keep ("in use by i-123")
4. in-use check failed or was not made        -> keep ("in-use check failed: AccessDenied ...")
5. build timestamp not trustworthy            -> keep ("build timestamp '0' not understood ...")
6. not available yet (pending, queued, ...)   -> keep ("state pending")
7. among the newest N available in its group  -> keep ("newest 3")
8. built less than the minimum age ago        -> keep ("too young")
9. not deprecated yet                         -> deprecate
10. deprecated less than the grace period ago -> keep ("deprecated, grace until ...")
11. a cloud with an OBSOLETE stage (GCE), and
    ``obsolete_days`` > 0: not obsolete yet     -> obsolete (new uses refused)
    obsolete less than ``obsolete_days`` ago    -> keep ("obsolete, delete after ...")
12. otherwise                                 -> delete

A group is (cloud, region, os, kubernetes minor, arch, variant) from the metadata. An image's age
is its build time: the metadata's Packer timestamp, trusted only in its format and between
2015 and now plus a day (metadata.parse_build_timestamp). An image whose timestamp fails
that is kept, and neither counts toward nor displaces its group's newest N.
Deletion therefore always takes two runs at least ``deprecate_grace_days`` apart (three on
GCE, the last ``obsolete_days`` after the second), and a re-run after any interruption
recomputes everything from the cloud's own state. A deprecation carries its end of life (now
plus the grace) to the store: Azure's endOfLifeDate must lie in the future.

``apply`` carries decisions out through the store (``deprecate`` / ``delete``), one image
at a time, capturing each failure instead of stopping. Cloud-specific inventory (listing,
batched in-use checks, orphan snapshots) lives in ``gather``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from imagebuilder.clouds import CloudError, ImageFilter, ImageRecord, ImageStore, registry, utcnow
from imagebuilder.config import RetentionPolicy
from imagebuilder.metadata import PREFIX, parse_build_timestamp
from imagebuilder.textline import one_line

log = logging.getLogger(__name__)

AVAILABLE_STATES = frozenset({"available", "active"})
TRANSIENT_STATES = frozenset({"pending", "queued", "saving", "importing", "uploading", "creating", "copying",
                              "transient", "updating"})

GroupKey = tuple[str, str, str, str, str, str]


class Action(str, Enum):
    KEEP = "keep"
    DEPRECATE = "deprecate"
    OBSOLETE = "obsolete"  # GCE: new uses refused; deleted once obsolete_days have passed
    DELETE = "delete"


@dataclass(frozen=True)
class Decision:
    record: ImageRecord
    action: Action
    reason: str
    end_of_life: datetime | None = None  # deprecate/obsolete: when the next step may come

    def to_json(self) -> dict[str, Any]:
        meta = self.record.metadata
        return {
            "cloud": self.record.cloud,
            "region": self.record.region,
            "image_id": self.record.image_id,
            "name": self.record.name,
            "os": meta.os if meta else None,
            "kubernetes_minor": meta.kubernetes_minor if meta else None,
            "arch": meta.arch if meta else None,
            "built_at": built.isoformat() if (built := built_at(self.record)) else None,
            "deprecated_at": self.record.deprecated_at.isoformat() if self.record.deprecated_at else None,
            "obsoleted_at": self.record.obsoleted_at.isoformat() if self.record.obsoleted_at else None,
            "end_of_life": self.end_of_life.isoformat() if self.end_of_life else None,
            "action": self.action.value,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Orphan:
    """Something of ours left behind by an image that no longer exists (an AMI's snapshot)."""

    cloud: str
    region: str
    resource_id: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"cloud": self.cloud, "region": self.region, "resource_id": self.resource_id, "reason": self.reason}


@dataclass(frozen=True)
class Outcome:
    """What apply did for one decision or orphan; error is set when it failed."""

    subject: str  # image or snapshot id
    cloud: str
    region: str
    action: str  # "deprecate", "obsolete", "delete", "sweep"
    done: list[str] = field(default_factory=list)  # ids deleted (image, snapshots) or deprecated
    error: str | None = None
    kept: str | None = None  # the re-check right before the step found a reason to keep it after all

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "cloud": self.cloud, "region": self.region, "action": self.action,
                "done": self.done, "error": self.error, "kept": self.kept}


# -- the policy engine -------------------------------------------------------------------


def built_at(record: ImageRecord, now: datetime | None = None) -> datetime | None:
    """When the image was built (the metadata's build timestamp); None when it cannot be trusted."""
    if record.metadata is None:
        return record.created_at
    try:
        return parse_build_timestamp(record.metadata.build_timestamp, now)
    except ValueError:
        return None


def build_time_problem(record: ImageRecord, now: datetime | None = None) -> str | None:
    """Why the record's build timestamp cannot be trusted; None when it can (or it is not ours)."""
    if record.metadata is None:
        return None
    try:
        parse_build_timestamp(record.metadata.build_timestamp, now)
    except ValueError as error:
        return str(error)
    return None


def group_key(record: ImageRecord) -> GroupKey | None:
    meta = record.metadata
    if meta is None:
        return None
    # A variant's images (Azure cvm, qemu efi) are not newer copies of the default cell's.
    return (record.cloud, record.region, meta.os, meta.kubernetes_minor, meta.arch, meta.variant)


def newest_first_key(record: ImageRecord, built: datetime) -> tuple[datetime, datetime, str]:
    return (built, record.created_at, record.image_id)


def protected(record: ImageRecord, policy: RetentionPolicy) -> bool:
    """Any value of the protect tag protects, "false" included: fail closed. A tag without a
    value (a Glance image tag) of that name protects too."""
    return policy.protect_tag in record.tags or policy.protect_tag in record.plain_tags


def decide(records: Iterable[ImageRecord], in_use: Mapping[str, list[str] | None], policy: RetentionPolicy,
           now: datetime | None = None, unknown_reasons: Mapping[str, str] | None = None) -> list[Decision]:
    """One decision per record, in the order given.

    ``in_use`` maps image id -> what uses it ([] when nothing), or None when the check
    failed; an image missing from the map counts as unchecked. ``unknown_reasons`` says
    why a check failed (image id -> one line).
    """
    now = now or utcnow()
    records = list(records)
    unknown_reasons = unknown_reasons or {}
    built = _build_times(records, now)
    newest = _newest_per_group(records, built, policy.keep_newest)
    min_age = timedelta(days=policy.min_age_days)
    grace = timedelta(days=policy.deprecate_grace_days)
    obsolete = timedelta(days=policy.obsolete_days)
    return [_decide_one(r, in_use, unknown_reasons, newest, built, policy, now, min_age, grace, obsolete)
            for r in records]


def _build_times(records: Sequence[ImageRecord], now: datetime) -> dict[tuple[str, str, str], datetime | str]:
    """identity -> the trusted build time, or why there is none (ours only)."""
    times: dict[tuple[str, str, str], datetime | str] = {}
    for record in records:
        if record.metadata is None:
            continue
        try:
            times[_identity(record)] = parse_build_timestamp(record.metadata.build_timestamp, now)
        except ValueError as error:
            times[_identity(record)] = str(error)
    return times


def _newest_per_group(records: Sequence[ImageRecord], built: Mapping[tuple[str, str, str], datetime | str],
                      keep: int) -> set[tuple[str, str, str]]:
    """The newest `keep` available images of each group, among those with a trusted build time."""
    groups: dict[GroupKey, list[tuple[datetime, datetime, str]]] = defaultdict(list)
    members_of: dict[tuple[datetime, datetime, str], ImageRecord] = {}
    for record in records:
        key = group_key(record)
        when = built.get(_identity(record))
        if key is not None and record.state in AVAILABLE_STATES and isinstance(when, datetime):
            sort_key = newest_first_key(record, when)
            groups[key].append(sort_key)
            members_of[sort_key] = record
    kept: set[tuple[str, str, str]] = set()
    for members in groups.values():
        members.sort(reverse=True)
        kept.update(_identity(members_of[k]) for k in members[:keep])
    return kept


def _identity(record: ImageRecord) -> tuple[str, str, str]:
    return (record.cloud, record.region, record.image_id)


def _decide_one(record: ImageRecord, in_use: Mapping[str, list[str] | None], unknown_reasons: Mapping[str, str],
                newest: set[tuple[str, str, str]], built_times: Mapping[tuple[str, str, str], datetime | str],
                policy: RetentionPolicy, now: datetime, min_age: timedelta, grace: timedelta,
                obsolete: timedelta) -> Decision:
    def keep(reason: str) -> Decision:
        return Decision(record, Action.KEEP, reason)

    if record.metadata is None:
        return keep("not ours: no complete imagebuilder metadata, never touched")
    if protected(record, policy):
        return keep(f"protected ({policy.protect_tag})")
    if record.extra.get("protected") is True:  # the cloud's own deletion protection (Glance `protected`)
        return keep("protected (the cloud's deletion protection)")
    users = in_use.get(record.image_id, None)
    if users:
        shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
        return keep(f"in use by {shown}")
    if users is None:
        why = unknown_reasons.get(record.image_id, "not checked")
        return keep(f"in-use check failed: {why}")
    built = built_times.get(_identity(record))
    if not isinstance(built, datetime):
        return keep(str(built or "build timestamp not checked"))
    if record.state not in AVAILABLE_STATES and record.state in TRANSIENT_STATES:
        return keep(f"state {record.state}")
    if _identity(record) in newest:
        return keep(f"newest {policy.keep_newest}")
    if now - built < min_age:
        return keep(f"too young (built {built:%Y-%m-%d}, min age {policy.min_age_days}d)")
    if record.deprecated_at is None:
        return Decision(record, Action.DEPRECATE, "older than the newest "
                        f"{policy.keep_newest}, not in use; delete after {policy.deprecate_grace_days}d",
                        end_of_life=now + grace)
    until = record.deprecated_at + grace
    if now < until or now < record.deprecated_at:
        return keep(f"deprecated, grace until {until:%Y-%m-%d %H:%M}")
    if registry.has_obsolete_stage(record.cloud) and policy.obsolete_days > 0:
        if record.obsoleted_at is None:
            return Decision(record, Action.OBSOLETE, f"deprecated since {record.deprecated_at:%Y-%m-%d}, grace "
                            f"over; new uses refused, delete after {policy.obsolete_days}d", end_of_life=now + obsolete)
        obsolete_until = record.obsoleted_at + obsolete
        if now < obsolete_until or now < record.obsoleted_at:
            return keep(f"obsolete, delete after {obsolete_until:%Y-%m-%d %H:%M}")
        return Decision(record, Action.DELETE, f"obsolete since {record.obsoleted_at:%Y-%m-%d}, grace over")
    return Decision(record, Action.DELETE, f"deprecated since {record.deprecated_at:%Y-%m-%d}, grace over")


# -- sharing is use ----------------------------------------------------------------------


def shared_reason(record: ImageRecord, store: ImageStore) -> str | None:
    """'shared with account 1111...' when others may launch the image; raises CloudError when unknown.

    A store that can tell (``shared_with``) is asked; a public image is shared with everyone."""
    if record.public:
        return "shared with everyone (public)"
    asker = getattr(store, "shared_with", None)
    if not callable(asker):
        return None
    principals: list[str] = asker(record)
    if not principals:
        return None
    shown = ", ".join(principals[:3]) + (f" and {len(principals) - 3} more" if len(principals) > 3 else "")
    return f"shared with {shown}"


def keep_shared(decisions: Sequence[Decision], store: ImageStore, policy: RetentionPolicy,
                deadline: Deadline | None = None) -> list[Decision]:
    """Images to deprecate or delete that are shared with other accounts or projects are kept
    (unless ``prune_shared``): others may run them, and their instances are not ours to see.
    Only the candidates are asked about (one call each), not every image."""
    if policy.prune_shared:
        return list(decisions)
    result: list[Decision] = []
    for decision in decisions:
        if decision.action is Action.KEEP:
            result.append(decision)
            continue
        try:
            reason = shared_reason(decision.record, store)
        except Exception as error:  # noqa: BLE001 - cannot tell who may use it: keep it
            result.append(Decision(decision.record, Action.KEEP, f"in-use check failed: sharing: {_error_line(error)}"))
            continue
        result.append(decision if reason is None else Decision(
            decision.record, Action.KEEP, f"{reason} (prune_shared: true prunes shared images)"))
    return result


def _error_line(error: BaseException) -> str:
    text = one_line(error)
    return text if isinstance(error, CloudError) else f"{type(error).__name__}: {text}"[:400]


def recheck(record: ImageRecord, store: ImageStore, prune_shared: bool) -> str | None:
    """Right before a destructive step: why the image must stay after all, or None to go ahead.

    The store's exact per-image check (for AWS: instances filtered by the image id, the launch
    templates, configurations and groups naming it) and, unless prune_shared, its sharing.
    Anything appearing since the plan keeps the image; a check that fails keeps it too."""
    try:
        users = store.in_use(record)
    except Exception as error:  # noqa: BLE001
        return f"re-check failed: {_error_line(error)}"
    if users is None:
        return "re-check failed: cannot tell whether it is in use"
    if users:
        shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
        return f"in use since the plan by {shown}"
    if not prune_shared:
        try:
            shared = shared_reason(record, store)
        except Exception as error:  # noqa: BLE001
            return f"re-check failed: sharing: {_error_line(error)}"
        if shared:
            return f"{shared} since the plan"
    return None


# -- the run's time limit ------------------------------------------------------------------


@dataclass(frozen=True)
class Deadline:
    """`prune --timeout`: work not started by then is reported as not done, never started late.

    Each call is bounded by the SDK clients' connect and read timeouts, so the run ends at most
    one call's timeouts after the deadline."""

    seconds: float
    ends: float  # time.monotonic()

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.ends

    def reason(self) -> str:
        return f"not started: --timeout {self.seconds:g}s reached | fix: raise --timeout, or run again to finish"


NO_DEADLINE = Deadline(float("inf"), float("inf"))


# -- inventory ---------------------------------------------------------------------------


@dataclass
class Inventory:
    """What one store holds, and what refers to it, gathered with as few calls as it can."""

    cloud: str
    store: ImageStore
    records: list[ImageRecord] = field(default_factory=list)
    in_use: dict[str, list[str] | None] = field(default_factory=dict)
    unknown_reasons: dict[str, str] = field(default_factory=dict)
    orphans: list[Orphan] = field(default_factory=list)
    foreign_count: int = 0  # images of the account without any imagebuilder tag: not listed, untouched
    errors: list[str] = field(default_factory=list)  # regions that could not be listed, one line each
    sweep: Callable[[Orphan], list[str]] | None = None  # deletes an orphan; returns what it deleted


LOCAL_ORPHAN_AGE = timedelta(hours=1)  # a publish places the file before its record: leave young files alone


def gather(store: ImageStore, min_orphan_age: timedelta = timedelta(0), deadline: Deadline = NO_DEADLINE) -> Inventory:
    """The store's images, their in-use state and orphans; per-region failures recorded, not raised."""
    from imagebuilder.clouds.local import LocalCatalogue

    cloud = registry.clouds().get(store.cloud)
    own = cloud.gather_inventory(store, min_orphan_age, deadline) if cloud else None
    if own is not None:  # the cloud gathers it its own way, with fewer calls
        return own  # type: ignore[no-any-return]
    inventory = Inventory(cloud=store.cloud, store=store)
    if deadline.passed:
        inventory.errors.append(f"{store.cloud}: {deadline.reason()}")
        return inventory
    if isinstance(store, LocalCatalogue):
        inventory.orphans = local_orphans(store, max(min_orphan_age, LOCAL_ORPHAN_AGE))
        inventory.sweep = lambda orphan: _remove_local(store, orphan)
    try:
        records = store.list_images(ImageFilter(include_foreign=True))
    except CloudError as error:
        inventory.errors.append(str(error))
        return inventory
    except Exception as error:  # noqa: BLE001 - an SDK's surprise (a proxy's page): one line, the others go on
        inventory.errors.append(f"{store.cloud}: listing failed: {type(error).__name__}: {' '.join(str(error).split())}"
                                [:400])
        return inventory
    inventory.records = [r for r in records if is_candidate(r)]
    inventory.foreign_count = len(records) - len(inventory.records)
    batched = getattr(store, "images_in_use", None)
    if callable(batched):
        try:
            inventory.in_use.update(batched(inventory.records))
        except Exception as error:  # noqa: BLE001 - CloudError or an SDK's surprise: every image unchecked
            why = str(error) if isinstance(error, CloudError) else f"{type(error).__name__}: {error}"
            for record in inventory.records:
                inventory.in_use[record.image_id] = None
                inventory.unknown_reasons[record.image_id] = one_line(why)
            return inventory
    for record in inventory.records:
        if record.image_id in inventory.in_use or record.metadata is None:
            continue
        try:
            inventory.in_use[record.image_id] = store.in_use(record)
        except CloudError as error:
            inventory.in_use[record.image_id] = None
            inventory.unknown_reasons[record.image_id] = str(error)
        except Exception as error:  # noqa: BLE001 - an SDK's surprise: cannot tell, so keep the image
            inventory.in_use[record.image_id] = None
            inventory.unknown_reasons[record.image_id] = f"{type(error).__name__}: {' '.join(str(error).split())}"
        if inventory.in_use[record.image_id] is None and record.image_id not in inventory.unknown_reasons:
            inventory.unknown_reasons[record.image_id] = f"the {store.cloud} store cannot tell"
    return inventory


def local_orphans(store: Any, min_age: timedelta) -> list[Orphan]:
    """Image directories of the local catalogue without a record (a delete killed half-way)."""
    images_dir: Path = store.images_dir
    if not images_dir.is_dir():
        return []
    cutoff = time.time() - min_age.total_seconds()
    return [Orphan(store.cloud, "local", path.name, "image files without a catalogue record")
            for path in sorted(images_dir.iterdir())
            if path.is_dir() and not (store.records_dir / f"{path.name}.json").exists()
            and path.stat().st_mtime < cutoff]


def _remove_local(store: Any, orphan: Orphan) -> list[str]:
    path = store.images_dir / orphan.resource_id
    if (store.records_dir / f"{orphan.resource_id}.json").exists():  # published meanwhile: not an orphan
        return []
    shutil.rmtree(path, ignore_errors=True)
    return [orphan.resource_id]


def is_candidate(record: ImageRecord) -> bool:
    """Listed by prune: ours, or carrying any of our tags (half-tagged images are shown, kept)."""
    return record.metadata is not None or any(key.startswith(PREFIX) for key in record.tags)


# -- apply -------------------------------------------------------------------------------

Progress = Callable[[Outcome], None]


def apply(decisions: Sequence[Decision], store: ImageStore, now: datetime | None = None,
          progress: Progress | None = None, deadline: Deadline = NO_DEADLINE,
          prune_shared: bool = False) -> list[Outcome]:
    """Deprecate and delete as decided, one image at a time; each failure recorded, none raised.

    Each step is preceded by ``recheck``: an image that came into use (or was shared) since
    the plan is kept, its outcome saying why.

    Safe to kill at any point: every step is one idempotent cloud call or a delete the
    next run recomputes (an AMI deregistered but not its snapshots leaves tagged orphans
    that the next run sweeps).
    """
    now = now or utcnow()
    outcomes: list[Outcome] = []
    for decision in decisions:
        if decision.action is Action.KEEP:
            continue
        if deadline.passed:
            record = decision.record
            outcome = Outcome(record.image_id, record.cloud, record.region, decision.action.value,
                              error=deadline.reason())
        else:
            outcome = _apply_one(decision, store, now, prune_shared)
        outcomes.append(outcome)
        if progress:
            progress(outcome)
    return outcomes


def _apply_one(decision: Decision, store: ImageStore, now: datetime, prune_shared: bool = False) -> Outcome:
    record = decision.record

    def outcome(done: list[str] | None = None, error: str | None = None) -> Outcome:
        return Outcome(record.image_id, record.cloud, record.region, decision.action.value, done or [], error)

    if record.metadata is None or decision.action is Action.KEEP:  # defence in depth: never touch these
        return outcome(error="refused: not a deletable imagebuilder image")
    why = recheck(record, store, prune_shared)
    if why is not None:
        if why.startswith("re-check failed"):
            return outcome(error=f"kept: {why}")
        return Outcome(record.image_id, record.cloud, record.region, decision.action.value, kept=why)
    try:
        if decision.action is Action.DEPRECATE:
            store.deprecate(record, now, end_of_life=decision.end_of_life)
            return outcome(done=[record.image_id])
        if decision.action is Action.OBSOLETE:
            store.obsolete(record, now, end_of_life=decision.end_of_life)
            return outcome(done=[record.image_id])
        return outcome(done=list(store.delete(record)))
    except CloudError as error:
        return outcome(error=str(error))
    except Exception as error:  # noqa: BLE001 - one image's surprise must not stop the run
        log.exception("%s %s %s failed", record.cloud, record.image_id, decision.action.value)
        return outcome(error=f"{type(error).__name__}: {' '.join(str(error).split())}")


def sweep(orphans: Sequence[Orphan], remove: Callable[[Orphan], list[str]],
          progress: Progress | None = None, deadline: Deadline = NO_DEADLINE) -> list[Outcome]:
    """Delete orphans (snapshots left by deleted images); each failure recorded, none raised."""
    outcomes: list[Outcome] = []
    for orphan in orphans:
        if deadline.passed:
            outcome = Outcome(orphan.resource_id, orphan.cloud, orphan.region, "sweep", error=deadline.reason())
            outcomes.append(outcome)
            if progress:
                progress(outcome)
            continue
        try:
            outcome = Outcome(orphan.resource_id, orphan.cloud, orphan.region, "sweep", list(remove(orphan)))
        except CloudError as error:
            outcome = Outcome(orphan.resource_id, orphan.cloud, orphan.region, "sweep", error=str(error))
        except Exception as error:  # noqa: BLE001 - one orphan's surprise must not stop the run
            outcome = Outcome(orphan.resource_id, orphan.cloud, orphan.region, "sweep",
                              error=f"{type(error).__name__}: {' '.join(str(error).split())}"[:400])
        outcomes.append(outcome)
        if progress:
            progress(outcome)
    return outcomes


@dataclass(frozen=True)
class Summary:
    images: int
    keep: int
    deprecate: int
    delete: int
    unchecked: int  # kept because the in-use check failed
    orphans: int
    failed: int  # apply failures plus regions that could not be gathered
    kept_at_recheck: int = 0  # in use or shared since the plan: not deprecated or deleted after all
    obsolete: int = 0  # to be made (or made) obsolete: GCE's stage between deprecated and deleted

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def summarize(decisions: Sequence[Decision], orphans: Sequence[Orphan], outcomes: Sequence[Outcome],
              gather_errors: int = 0) -> Summary:
    counts = {action: sum(1 for d in decisions if d.action is action) for action in Action}
    unchecked = sum(1 for d in decisions if d.reason.startswith("in-use check failed"))
    return Summary(images=len(decisions), keep=counts[Action.KEEP], deprecate=counts[Action.DEPRECATE],
                   delete=counts[Action.DELETE], unchecked=unchecked, orphans=len(orphans),
                   failed=sum(1 for o in outcomes if not o.ok) + gather_errors,
                   kept_at_recheck=sum(1 for o in outcomes if o.ok and o.kept), obsolete=counts[Action.OBSOLETE])
