"""`imagebuilder versions update`: refresh versions.lock.yaml from the release sites.

For every selected minor (all minors in the file when none are named):

- kubernetes moves to the newest patch that ``{kubernetes mirror}/stable-<minor>.txt``
  names. It never moves backwards: an older answer means a stale mirror and is an error.
- containerd, runc, crictl and the CNI plugins keep the versions already pinned, unless
  ``pins`` names another version (``--pin containerd=2.2.2``); a pin applies to every
  selected minor, so narrow it with ``--minor``.
- the sha256 of every pinned file, for every arch, is read again from the sum file the
  release site publishes beside it (see ``checksum_url``).

With ``add_newest`` (``--add-newest-minor``), ``{kubernetes mirror}/stable.txt`` is read too: when
it names a minor newer than every minor in the file, that minor is added as below. Its files
may not all be published on the day it appears (crictl often follows later); then it is left
out, the report says why, and the other minors are still updated.

A minor not yet in the file is added: kubernetes from stable-<minor>.txt, crictl
``<minor>.0``, containerd, runc, the CNI plugins and the pause image as pinned for the
newest minor already in the file; ``pins`` override any of them (``pause`` included).
A missing file is created the same way, and then ``pins`` must name containerd, runc,
cni_plugins and pause.

The file is written atomically (temporary file, then rename), only when every fetch
succeeded and the result validates, and its leading comment block is kept. Nothing is
written when the result is byte-identical.

Trust: this is the one place that reads sums from the host that serves the files. The
refresh is explicit and its diff is reviewed and committed; at build time only the pinned
sums are trusted. A sum that changes while its version stays the same is flagged in the
report, because upstream never republishes a release under the same name.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imagebuilder.atomicfile import write_atomically
from imagebuilder.errors import UserError
from imagebuilder.retry import retrying
from imagebuilder.versions import (
    ARCHES,
    COMPONENTS,
    MinorPins,
    UPSTREAM_FILES,
    UPSTREAM_MIRRORS,
    VersionsLock,
    load_versions,
)
from imagebuilder.versions_change import Change, VersionsUpdateError
from imagebuilder.versions_images import refresh_images

DEFAULT_TIMEOUT = 30.0  # seconds per request
DEFAULT_ATTEMPTS = 3  # tries per URL for connection errors, timeouts and HTTP 429/5xx
RETRY_DELAY = 0.5  # seconds before the second try, doubled each time after
DEFAULT_WORKERS = 8  # requests in flight at once
MAX_RESPONSE_BYTES = 64 * 1024  # sum files and stable-<minor>.txt are a few hundred bytes
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
ALLOWED_SCHEMES = ("http://", "https://", "file://")

# Where each component publishes the sums of its files: a suffix on the file's URL, or
# one file for the whole release directory (runc).
SUM_FILE_SUFFIX: dict[str, str] = {
    "kubernetes": ".sha256",
    "containerd": ".sha256sum",
    "crictl": ".sha256",
    "cni_plugins": ".sha256",
}
RELEASE_SUM_FILE: dict[str, str] = {"runc": "runc.sha256sum"}

PINNABLE: tuple[str, ...] = tuple(c for c in COMPONENTS if c != "kubernetes") + ("pause",)

DEFAULT_HEADER = """\
# Pinned downloads per Kubernetes minor: every file with its published sha256 per arch.
# Paths are relative to the component's mirror base URL (imagebuilder/versions.py,
# UPSTREAM_MIRRORS; matrix.yaml `mirrors:` overrides them). {arch} is amd64 or arm64.
# Written by `imagebuilder versions update` from the sums the release sites publish;
# review the diff and commit it. Build time trusts only these pinned sums.
"""

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_MINOR = re.compile(r"[0-9]+\.[0-9]+")
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)+")
_STABLE = re.compile(r"v([0-9]+\.[0-9]+)\.([0-9]+)")


@dataclass
class UpdateReport:
    """What `update_versions` found and did."""

    path: Path
    minors: list[str]
    added: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    fetched: int = 0
    created: bool = False
    written: bool = False
    deferred: str = ""  # the newest upstream minor that could not be added yet, and why
    before: VersionsLock | None = None  # the file as it was (None: it did not exist)
    after: VersionsLock | None = None  # the file as it is now, or would be after a dry run

    @property
    def changed(self) -> bool:
        return self.created or bool(self.added) or bool(self.changes)

    @property
    def suspicious(self) -> list[Change]:
        return [change for change in self.changes if change.suspicious]

    def lines(self) -> list[str]:
        """The report as the CLI prints it, one change a line, the outcome last."""
        out = [f"{minor}: added" for minor in self.added]
        out += [change.line() for change in self.changes]
        if self.deferred:
            out.append(self.deferred)
        checked = f"{len(self.minors)} minor(s) checked, {self.fetched} file(s) fetched"
        if not self.changed:
            out.append(f"{self.path} is up to date ({checked})")
        elif self.written:
            out.append(f"{'created' if self.created else 'wrote'} {self.path} ({checked})")
        else:
            out.append(f"{self.path} not written: dry run ({checked})")
        return out


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# ---------------------------------------------------------------- arguments


def parse_assignments(values: Iterable[str], option: str) -> dict[str, str]:
    """`["containerd=https://mirror/x", ...]` as a dict; for the CLI's repeated options."""
    result: dict[str, str] = {}
    for value in values:
        name, sep, setting = value.partition("=")
        name, setting = name.strip(), setting.strip()
        if not sep or not name or not setting:
            raise VersionsUpdateError(f"{option} {value!r}: expected NAME=VALUE, e.g. {option} containerd=...")
        if name in result:
            raise VersionsUpdateError(f"{option} {name} given twice: keep one")
        result[name] = setting
    return result


def check_mirrors(mirrors: dict[str, str]) -> dict[str, str]:
    """Every component's base URL, the upstream site unless `mirrors` overrides it."""
    for component, url in mirrors.items():
        if component == "registry":  # the image registry (versions_images), host[:port] or a URL
            continue
        if component not in COMPONENTS:
            raise VersionsUpdateError(f"--mirror {component}: unknown component; use one of: {', '.join(COMPONENTS)}")
        if not url.startswith(ALLOWED_SCHEMES):
            raise VersionsUpdateError(f"--mirror {component}={url}: not a URL; "
                                      "start it with http://, https:// or file://")
    bases = {c: (mirrors.get(c) or UPSTREAM_MIRRORS[c]).rstrip("/") for c in COMPONENTS}
    if mirrors.get("registry"):
        bases["registry"] = mirrors["registry"]
    return bases


def check_pins(pins: dict[str, str]) -> dict[str, str]:
    for name, version in pins.items():
        if name == "kubernetes":
            raise VersionsUpdateError("--pin kubernetes: the Kubernetes patch comes from stable-<minor>.txt; "
                                      "choose the minor with --minor")
        if name not in PINNABLE:
            raise VersionsUpdateError(f"--pin {name}: unknown name; use one of: {', '.join(PINNABLE)}")
        if not _VERSION.fullmatch(version):
            raise VersionsUpdateError(f"--pin {name}={version}: not a version; write it like 2.2.1 (no leading v)")
    return dict(pins)


def _check_minors(minors: list[str] | None, lock: VersionsLock | None, path: Path) -> list[str]:
    if not minors:
        if lock is None:
            raise VersionsUpdateError(f"{path} does not exist: name the minors to create it with, "
                                      "e.g. --minor 1.35 --pin containerd=... --pin runc=... "
                                      "--pin cni_plugins=... --pin pause=...")
        return list(lock.minors)
    chosen: list[str] = []
    for minor in minors:
        if not _MINOR.fullmatch(minor):
            raise VersionsUpdateError(f"--minor {minor}: not a Kubernetes minor; write it like 1.35")
        if minor not in chosen:
            chosen.append(minor)
    return chosen


# ---------------------------------------------------------------- fetching


class _TryFailed(Exception):
    """One try's failure: the problem in one line, and whether another try may help."""

    def __init__(self, problem: str, passing: bool) -> None:
        super().__init__(problem)
        self.passing = passing


def fetch_text(url: str, *, timeout: float = DEFAULT_TIMEOUT, attempts: int = DEFAULT_ATTEMPTS) -> str:
    """GET a small text file. Retries connection errors, timeouts and HTTP 408/429/5xx."""
    tries = 0

    def once() -> bytes:
        nonlocal tries
        tries += 1
        request = urllib.request.Request(url, headers={"User-Agent": "imagebuilder-versions-update"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return bytes(response.read(MAX_RESPONSE_BYTES + 1))
        except urllib.error.HTTPError as error:
            error.close()
            raise _TryFailed(f"HTTP {error.code} {error.reason}", error.code in RETRY_STATUS) from None
        except (urllib.error.URLError, OSError) as error:
            raise _TryFailed(str(getattr(error, "reason", None) or error), not url.startswith("file://")) from None

    try:
        body = retrying(once, attempts=attempts, first_delay=RETRY_DELAY, sleep=time.sleep, jitter=False,
                        retryable=lambda error: isinstance(error, _TryFailed) and error.passing)
    except _TryFailed as failure:
        suffix = f" (after {tries} tries)" if tries > 1 else ""
        raise VersionsUpdateError(f"{url}: {failure}{suffix}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise VersionsUpdateError(f"{url}: larger than {MAX_RESPONSE_BYTES} bytes, not a sum or version file")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise VersionsUpdateError(f"{url}: not UTF-8 text, not a sum or version file") from None


def fetch_all(urls: Iterable[str], *, timeout: float, attempts: int, workers: int) -> dict[str, str]:
    """Every URL's text, fetched concurrently; the first failure (in order) is raised."""
    unique = list(dict.fromkeys(urls))
    if not unique:
        return {}

    def one(url: str) -> str | VersionsUpdateError:
        try:
            return fetch_text(url, timeout=timeout, attempts=attempts)
        except VersionsUpdateError as error:
            return error

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique)))) as pool:
        results = dict(zip(unique, pool.map(one, unique)))
    failures = [result for result in results.values() if isinstance(result, VersionsUpdateError)]
    if failures:
        more = f" (and {len(failures) - 1} more failed)" if len(failures) > 1 else ""
        raise VersionsUpdateError(f"{failures[0]}{more}")
    return {url: text for url, text in results.items() if isinstance(text, str)}


# ---------------------------------------------------------------- parsing


def stable_url(kubernetes_base: str, minor: str) -> str:
    return f"{kubernetes_base}/stable-{minor}.txt"


def newest_url(kubernetes_base: str) -> str:
    return f"{kubernetes_base}/stable.txt"


def parse_newest(text: str, url: str) -> str:
    """The minor of the newest stable release, `1.36` from stable.txt's `v1.36.0`."""
    answer = text.strip()
    match = _STABLE.fullmatch(answer)
    if not match:
        raise VersionsUpdateError(f"{url}: expected a version like v1.35.0, got {answer[:40]!r}")
    return match.group(1)


def parse_stable(text: str, url: str, minor: str) -> str:
    """`v1.35.1` from stable-1.35.txt as `1.35.1`."""
    answer = text.strip()
    match = _STABLE.fullmatch(answer)
    if not match:
        raise VersionsUpdateError(f"{url}: expected a version like v{minor}.0, got {answer[:40]!r}")
    if match.group(1) != minor:
        raise VersionsUpdateError(f"{url}: names {answer}, which is not a {minor} release")
    return f"{minor}.{match.group(2)}"


def checksum_url(component: str, base: str, path: str) -> str:
    """The URL of the sum file that covers `base/path`."""
    file_url = f"{base}/{path}"
    if component in RELEASE_SUM_FILE:
        return f"{file_url.rsplit('/', 1)[0]}/{RELEASE_SUM_FILE[component]}"
    if component in SUM_FILE_SUFFIX:
        return file_url + SUM_FILE_SUFFIX[component]
    raise VersionsUpdateError(f"component {component!r}: no known sum file; use one of: {', '.join(COMPONENTS)}")


def parse_sum(text: str, url: str, filename: str) -> str:
    """The sha256 of `filename` from a sum file: `SUM` alone, or `SUM  NAME` lines (sha256sum)."""
    entries: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2 or not _SHA256.fullmatch(fields[0]):
            raise VersionsUpdateError(f"{url}: {line.strip()[:70]!r} is not a sha256 line "
                                      "('SHA256' or 'SHA256  FILENAME', 64 hex digits)")
        entries.append((fields[0], fields[1].lstrip("*") if len(fields) == 2 else None))
    named = [digest for digest, name in entries if name is not None and name.rsplit("/", 1)[-1] == filename]
    if named:
        digest = named[0]
    elif len(entries) == 1 and entries[0][1] is None:
        digest = entries[0][0]
    elif not entries:
        raise VersionsUpdateError(f"{url}: empty, expected the sha256 of {filename}")
    else:
        names = ", ".join(str(name) for _, name in entries[:4])
        raise VersionsUpdateError(f"{url}: no sha256 for {filename} (the file lists {names})")
    return digest.lower()


# ---------------------------------------------------------------- planning


@dataclass
class _FilePlan:
    component: str
    name: str
    path: str
    old_sums: dict[str, str]
    version_changed: bool


@dataclass
class _MinorPlan:
    minor: str
    pause: str
    versions: dict[str, str]  # component -> version, in file order
    files: list[_FilePlan]
    added: bool


def _replace_version(path: str, old: str, new: str, where: str) -> str:
    if old == new:
        return path
    if old not in path:
        raise VersionsUpdateError(f"{where}: path {path!r} does not contain its version {old}, so the path for "
                                  f"{new} cannot be derived; fix the path by hand")
    return path.replace(old, new)


def _plan_existing(minor: str, pins_: MinorPins, patch: str, pin: dict[str, str], path: Path) -> _MinorPlan:
    versions: dict[str, str] = {}
    files: list[_FilePlan] = []
    for component, entry in pins_.components.items():
        if component not in COMPONENTS:
            raise VersionsUpdateError(f"{path}: minors.{minor}.components.{component}: unknown component; "
                                      f"use one of: {', '.join(COMPONENTS)}")
        new_version = patch if component == "kubernetes" else pin.get(component, entry.version)
        versions[component] = new_version
        for name, pinned in entry.files.items():
            where = f"{path}: minors.{minor}.components.{component}.files.{name}"
            files.append(_FilePlan(component, name, _replace_version(pinned.path, entry.version, new_version, where),
                                   dict(pinned.sha256), new_version != entry.version))
    return _MinorPlan(minor, pin.get("pause", pins_.pause), versions, files, added=False)


def _plan_new(minor: str, lock: VersionsLock | None, patch: str, pin: dict[str, str], path: Path) -> _MinorPlan:
    template = None
    if lock is not None and lock.minors:
        template = lock.minors[max(lock.minors, key=_version_key)]
    versions: dict[str, str] = {}
    for component in COMPONENTS:
        if component == "kubernetes":
            versions[component] = patch
        elif component in pin:
            versions[component] = pin[component]
        elif component == "crictl":
            versions[component] = f"{minor}.0"
        elif template is not None and component in template.components:
            versions[component] = template.components[component].version
        else:
            raise VersionsUpdateError(f"{path}: no version to pin for {component} in the new minor {minor}; "
                                      f"pass --pin {component}=VERSION")
    pause = pin.get("pause") or (template.pause if template is not None else None)
    if not pause:
        raise VersionsUpdateError(f"{path}: no pause image version for the new minor {minor}; pass --pin pause=3.10")
    files = [
        _FilePlan(component, name, layout.replace("{version}", versions[component]), {}, True)
        for component in COMPONENTS
        for name, layout in UPSTREAM_FILES[component].items()
    ]
    return _MinorPlan(minor, pause, versions, files, added=True)


_Job = tuple[str, str, str, str]  # (minor, component, file, arch)


def _plan(chosen: list[str], lock: VersionsLock | None, path: Path, bases: dict[str, str], pin: dict[str, str], *,
          timeout: float, attempts: int, workers: int) -> tuple[list[_MinorPlan], int]:
    """Each minor's new versions and paths, the Kubernetes patch read from stable-<minor>.txt."""
    urls = {minor: stable_url(bases["kubernetes"], minor) for minor in chosen}
    texts = fetch_all(urls.values(), timeout=timeout, attempts=attempts, workers=workers)
    plans: list[_MinorPlan] = []
    for minor in chosen:
        patch = parse_stable(texts[urls[minor]], urls[minor], minor)
        if lock is None or minor not in lock.minors:
            plans.append(_plan_new(minor, lock, patch, pin, path))
            continue
        current = lock.minors[minor].kubernetes_version
        if _version_key(patch) < _version_key(current):
            raise VersionsUpdateError(f"{urls[minor]}: names v{patch}, older than the pinned {current}; "
                                      "point the kubernetes mirror at an up-to-date copy")
        plans.append(_plan_existing(minor, lock.minors[minor], patch, pin, path))
    return plans, len(texts)


def _sum_jobs(plans: list[_MinorPlan], bases: dict[str, str]) -> dict[_Job, tuple[str, str]]:
    """For every file and arch: the URL of its sum file and the file name to look up in it."""
    jobs: dict[_Job, tuple[str, str]] = {}
    for plan in plans:
        for item in plan.files:
            for arch in ARCHES:
                arch_path = item.path.replace("{arch}", arch)
                jobs[(plan.minor, item.component, item.name, arch)] = (
                    checksum_url(item.component, bases[item.component], arch_path),
                    arch_path.rsplit("/", 1)[-1],
                )
    return jobs


def _apply(plan: _MinorPlan, lock: VersionsLock | None, jobs: dict[_Job, tuple[str, str]],
           sum_texts: dict[str, str], report: UpdateReport) -> dict[str, Any]:
    """The minor's new entry, with the fetched sums; its differences go into `report`."""
    before = None if plan.added or lock is None else lock.minors[plan.minor]
    old_versions = before.component_versions() if before else {}
    components: dict[str, Any] = {c: {"version": v, "files": {}} for c, v in plan.versions.items()}
    if before is None:
        report.added.append(plan.minor)
    else:
        report.changes += [Change(plan.minor, c, old_versions.get(c), v)
                           for c, v in plan.versions.items() if old_versions.get(c) != v]
        if plan.pause != before.pause:
            report.changes.append(Change(plan.minor, "pause", before.pause, plan.pause))
    for item in plan.files:
        sums: dict[str, str] = {}
        for arch in ARCHES:
            url, filename = jobs[(plan.minor, item.component, item.name, arch)]
            sums[arch] = parse_sum(sum_texts[url], url, filename)
            old = item.old_sums.get(arch)
            if before is not None and old != sums[arch]:
                report.changes.append(Change(plan.minor, f"{item.name} {arch}", old, sums[arch], "sha256",
                                             suspicious=old is not None and not item.version_changed))
        components[item.component]["files"][item.name] = {"path": item.path, "sha256": sums}
    return {"pause": plan.pause, "components": components}


def _update_minors(chosen: list[str], lock: VersionsLock | None, path: Path, bases: dict[str, str],
                   pin: dict[str, str], report: UpdateReport, fetch: dict[str, Any]) -> dict[str, Any]:
    """The new entries of the `chosen` minors; their differences and fetch count go into `report`."""
    if not chosen:
        return {}
    plans, fetched = _plan(chosen, lock, path, bases, pin, **fetch)
    jobs = _sum_jobs(plans, bases)
    sum_texts = fetch_all((url for url, _ in jobs.values()), **fetch)
    report.fetched += fetched + len(sum_texts)
    entries = {plan.minor: _apply(plan, lock, jobs, sum_texts, report) for plan in plans}
    image_changes, image_requests = refresh_images(entries, lock, plans, bases.get("registry"),
                                                   timeout=fetch["timeout"], workers=fetch["workers"])
    report.changes += image_changes
    report.fetched += image_requests
    return entries


# ---------------------------------------------------------------- writing


def leading_comment(text: str) -> str:
    """The comment block (and blank lines) before the first line of YAML."""
    header: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.strip() and not line.lstrip().startswith("#"):
            break
        header.append(line)
    block = "".join(header)
    return block if block.endswith("\n") or not block else block + "\n"


def render_lock(lock: VersionsLock, header: str = "") -> str:
    """The lock file text: the header comment, then the YAML, in the model's key order."""
    data = lock.model_dump(by_alias=True, mode="json")
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=200, allow_unicode=False)


def _order(existing: list[str], added: list[str]) -> list[str]:
    """Keep the file's order; new minors join a sorted file in sorted place, else go last."""
    if not added:
        return existing
    keys = [_version_key(m) for m in existing]
    everything = existing + added
    if keys == sorted(keys, reverse=True):
        return sorted(everything, key=_version_key, reverse=True)
    if keys == sorted(keys):
        return sorted(everything, key=_version_key)
    return everything


# ---------------------------------------------------------------- the command


def update_versions(
    lock_path: Path,
    minors: list[str] | None = None,
    mirrors: dict[str, str] | None = None,
    write: bool = True,
    pins: dict[str, str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    attempts: int = DEFAULT_ATTEMPTS,
    workers: int = DEFAULT_WORKERS,
    add_newest: bool = False,
) -> UpdateReport:
    """Refresh `lock_path` (see the module docstring). Raises VersionsUpdateError, and then
    leaves the file as it was. `write=False` reports what would change without writing."""
    lock_path = Path(lock_path)
    bases = check_mirrors(dict(mirrors or {}))
    pin = check_pins(dict(pins or {}))
    original: bytes | None = None
    lock: VersionsLock | None = None
    header = DEFAULT_HEADER
    if lock_path.exists():
        original = lock_path.read_bytes()
        lock = load_versions(lock_path)  # a broken file is an InputError with its line
        header = leading_comment(original.decode("utf-8"))
    chosen = _check_minors(minors, lock, lock_path)
    report = UpdateReport(path=lock_path, minors=chosen, created=original is None)

    newest = ""
    if add_newest:
        url = newest_url(bases["kubernetes"])
        newest = parse_newest(fetch_text(url, timeout=timeout, attempts=attempts), url)
        report.fetched += 1
        known = [*chosen, *(lock.minors if lock is not None else ())]
        if newest in known or any(_version_key(newest) < _version_key(minor) for minor in known):
            newest = ""

    fetch = {"timeout": timeout, "attempts": attempts, "workers": workers}
    data: dict[str, Any] = {"schema": lock.schema_ if lock else 1, "minors": {}}
    if lock is not None:
        data["minors"] = lock.model_dump(by_alias=True, mode="json")["minors"]
    data["minors"].update(_update_minors(chosen, lock, lock_path, bases, pin, report, fetch))
    if newest:
        trial = UpdateReport(path=lock_path, minors=[newest])
        try:
            data["minors"].update(_update_minors([newest], lock, lock_path, bases, pin, trial, fetch))
        except VersionsUpdateError as error:
            report.deferred = (f"{newest}: the newest upstream minor is not added yet ({error}); "
                               "the next update tries again")
        else:
            report.added += trial.added
            report.minors.append(newest)
        report.fetched += trial.fetched
    existing = list(lock.minors) if lock is not None else []
    data["minors"] = {m: data["minors"][m] for m in _order(existing, report.added)}

    new_lock = VersionsLock.model_validate(data)
    report.before, report.after = lock, new_lock
    text = render_lock(new_lock, header)
    if VersionsLock.model_validate(yaml.safe_load(text)) != new_lock:  # what we write must read back the same
        raise VersionsUpdateError(f"{lock_path}: the rendered file does not read back as written; not writing it")
    if lock is not None and new_lock == lock:  # nothing changed: leave the file, and its formatting, alone
        return report
    if write:
        try:
            write_atomically(lock_path, text)
        except OSError as error:
            raise VersionsUpdateError(f"{lock_path}: cannot write: {error.strerror or error}") from None
        report.written = True
    return report


# ---------------------------------------------------------------- the scheduled workflow's report


def title(report: UpdateReport) -> str:
    """One line for a commit or pull request: what moved, minor by minor."""
    moved = [f"Kubernetes {change.new}" for change in report.changes
             if change.kind == "version" and change.item == "kubernetes"]
    moved += [f"{change.item} {change.new} ({change.minor})" for change in report.changes
              if change.kind == "version" and change.item != "kubernetes"]
    moved += [f"{minor} added" for minor in report.added]
    if report.suspicious:
        moved.append("sums changed at the same version")
    summary = ", ".join(moved) or ("sums refreshed" if report.changed else "up to date")
    return f"versions.lock.yaml: {summary}"[:120]


def markdown_report(report: UpdateReport, rebuilds: list[Any], matrix_name: str, auto_merge: bool) -> str:
    """The pull request body (or commit message body): the lock's changes and the cells they rebuild.

    `rebuilds` are imagebuilder.rebuilds.Rebuild (not imported here: the planner needs no fetching)."""
    lines = ["## versions.lock.yaml", ""]
    if not report.changed:
        lines.append("Up to date: no upstream release since the last update.")
    lines += [f"- {minor}: added; built once {matrix_name} names it under `kubernetes:`" for minor in report.added]
    lines += [f"- {change.line()}" for change in report.changes if change.kind == "version" or change.suspicious]
    sums = sum(1 for change in report.changes if change.kind == "sha256" and not change.suspicious)
    if sums:
        lines.append(f"- {sums} sha256 sum(s) read from the release sites for the files above")
    if report.deferred:
        lines.append(f"- {report.deferred}")
    if report.suspicious:
        lines += ["", "**A sum changed while its version did not: upstream never republishes a release under the "
                      "same name. Find out why before merging.**"]
    lines += ["", f"## Cells rebuilt ({len(rebuilds)})", ""]
    if rebuilds:
        lines += ["| cell | Kubernetes | why |", "|---|---|---|"]
        lines += [f"| `{r.cell.id}` | {r.cell.kubernetes_version} | {'; '.join(r.reasons)} |" for r in rebuilds]
    else:
        lines.append(f"None: no cell of {matrix_name} uses what moved.")
    if report.changed:
        lines += ["", "Committed to the default branch (`auto_merge_patches: true`); the nightly builds and "
                      "publishes these cells." if auto_merge else
                      "Merging lets the nightly build and publish these cells."]
    return "\n".join(lines) + "\n"
