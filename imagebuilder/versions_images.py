"""The image part of `imagebuilder versions update`: tags and digests of the images kubeadm needs.

For every refreshed minor: kube-apiserver, -controller-manager, -scheduler and -proxy follow the
Kubernetes patch (`v1.35.1`), pause follows the minor's `pause`, etcd and coredns keep their pinned
tags (a new minor starts from the newest minor's). Every digest is asked of the registry
(imagebuilder/registry.py; `--mirror registry=HOST` asks a mirror holding the same images).
A digest that changes while its tag stays the same is flagged, as for file sums.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from imagebuilder.registry import Registry, RegistryError, manifest_digest
from imagebuilder.versions import KUBERNETES_TAGGED_IMAGES, UPSTREAM_REGISTRY, VersionsLock
from imagebuilder.versions_change import Change, VersionsUpdateError


class _Plan(Protocol):
    minor: str
    pause: str
    versions: dict[str, str]
    added: bool


def planned_tags(plan: _Plan, lock: VersionsLock | None) -> dict[str, str]:
    """Path -> tag of the images of one refreshed minor (empty when nothing pins images yet)."""
    if lock is not None and plan.minor in lock.minors and not plan.added:
        source = lock.minors[plan.minor].images
    elif lock is not None and lock.minors:
        newest = max(lock.minors, key=lambda m: tuple(int(p) for p in m.split(".")))
        source = lock.minors[newest].images
    else:
        source = {}
    tags = {path: image.tag for path, image in source.items()}
    for path in tags:
        if path in KUBERNETES_TAGGED_IMAGES:
            tags[path] = f"v{plan.versions['kubernetes']}"
        elif path == "pause":
            tags[path] = plan.pause
    return tags


def refresh_images(minors: dict[str, dict[str, Any]], lock: VersionsLock | None, plans: list[_Plan],
                   registry: str | None, *, timeout: float, workers: int) -> tuple[list[Change], int]:
    """Write each plan's `images` into `minors` with fresh digests; the changes and the number of requests."""
    target = Registry(registry or UPSTREAM_REGISTRY)
    wanted = {plan.minor: planned_tags(plan, lock) for plan in plans}
    jobs = sorted({(path, tag) for tags in wanted.values() for path, tag in tags.items()})
    if not jobs:
        return [], 0

    def one(job: tuple[str, str]) -> str | RegistryError:
        try:
            return manifest_digest(target, *job, timeout=timeout)
        except RegistryError as error:
            return error

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        digests = dict(zip(jobs, pool.map(one, jobs)))
    failures = [d for d in digests.values() if isinstance(d, RegistryError)]
    if failures:
        more = f" (and {len(failures) - 1} more failed)" if len(failures) > 1 else ""
        raise VersionsUpdateError(f"{failures[0]}{more}")

    changes: list[Change] = []
    for plan in plans:
        before = lock.minors[plan.minor].images if lock is not None and plan.minor in lock.minors else {}
        images: dict[str, dict[str, str]] = {}
        for path, tag in wanted[plan.minor].items():
            digest = str(digests[(path, tag)])
            images[path] = {"tag": tag, "digest": digest}
            old = before.get(path)
            if old is None or old.digest != digest:
                changes.append(Change(plan.minor, f"image {path}:{tag}", old.digest if old else None, digest,
                                      "sha256", suspicious=old is not None and old.digest is not None
                                      and old.tag == tag))
        if images:
            minors[plan.minor]["images"] = images
    return changes, len(jobs)
