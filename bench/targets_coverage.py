"""How many of kubernetes-sigs/image-builder's make targets imagebuilder provides: per provider and
OS, the targets `imagebuilder targets -m examples/image-builder.yaml --format json` lists out of
image-builder's own (tests/data/image_builder_targets.txt), and the total.

    .venv/bin/python bench/targets_coverage.py [--matrix FILE] [--json]

A target counts when `imagebuilder targets` names it with at least one planned cell. The targets it
lists that image-builder lacks are counted apart ("extra"), each documented with its reason in
tests/data/image_builder_extras.yaml.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "tests" / "data" / "image_builder_targets.txt"
EXTRAS = ROOT / "tests" / "data" / "image_builder_extras.yaml"
EXAMPLE = ROOT / "examples" / "image-builder.yaml"
PREFIX = "build-"
# image-builder's provider names, longest first where one starts another (node-ova-local-vmx-...).
PROVIDERS = ("node-ova-local-vmx", "node-ova-local-base", "node-ova-local", "node-ova-vsphere-base",
             "node-ova-vsphere-clone", "node-ova-vsphere", "kubevirt-qemu", "azure-sig", "huaweicloud",
             "ami", "gce", "oci", "do", "oxide", "openstack", "osc", "qemu", "raw", "powervs", "nutanix",
             "hcloud", "proxmox", "vultr", "maas", "scaleway")
# <os>[-<variant or arch>...]: an OS is flatcar or <name>-<version>[-containerd] (windows-2022-containerd).
OS_PATTERN = re.compile(r"^(?P<os>flatcar|[a-z]+(?:-[a-z]+)*?-\d+(?:-containerd)?)(?P<rest>(?:-[a-z0-9]+)*)$")


@dataclass(frozen=True)
class Target:
    name: str
    provider: str
    os: str


def parse(name: str) -> Target:
    """A target name's image-builder provider and OS (build-node-ova-vsphere-clone-ubuntu-2404-efi:
    node-ova-vsphere-clone, ubuntu-2404)."""
    body = name.removeprefix(PREFIX)
    provider = next((p for p in PROVIDERS if body.startswith(p + "-")), None)
    match = OS_PATTERN.match(body[len(provider) + 1:]) if provider else None
    if provider is None or match is None:
        raise ValueError(f"{name}: not a build-<provider>-<os>[-variant] target of a known provider")
    return Target(name, provider, match["os"])


def upstream_targets(path: Path = UPSTREAM) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def documented_extras(path: Path = EXTRAS) -> dict[str, str]:
    """Target name -> the reason it is planned although image-builder has no such target."""
    return {name: reason for reason, names in yaml.safe_load(path.read_text()).items() for name in names}


def provided_targets(matrix: Path = EXAMPLE) -> dict[str, list[str]]:
    """`imagebuilder targets -m matrix --format json`: target -> its planned cells."""
    proc = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "targets", "-m", str(matrix), "--format", "json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"imagebuilder targets failed: {proc.stderr.strip()}")
    return {entry["target"]: entry["cells"] for entry in json.loads(proc.stdout)}


@dataclass(frozen=True)
class Coverage:
    total: Counter[tuple[str, str]]
    provided: Counter[tuple[str, str]]
    extras: list[str]

    @property
    def provided_count(self) -> int:
        return sum(self.provided.values())

    @property
    def total_count(self) -> int:
        return sum(self.total.values())


def coverage(upstream: list[str], provided: dict[str, list[str]]) -> Coverage:
    total: Counter[tuple[str, str]] = Counter()
    have: Counter[tuple[str, str]] = Counter()
    for name in upstream:
        target = parse(name)
        total[(target.provider, target.os)] += 1
        if provided.get(name):
            have[(target.provider, target.os)] += 1
    return Coverage(total, have, sorted(set(provided) - set(upstream)))


def table(result: Coverage) -> str:
    """One line per provider (its provided/total, then each OS's), then one per OS across providers."""
    providers = sorted({p for p, _ in result.total}, key=PROVIDERS.index)
    oses = sorted({o for _, o in result.total})
    width = max(len(name) for name in (*providers, *oses)) + 2

    def count(pairs: list[tuple[str, str]]) -> str:
        return f"{sum(result.provided[pair] for pair in pairs)}/{sum(result.total[pair] for pair in pairs)}"

    lines = ["by provider:"]
    for provider in providers:
        present = [o for o in oses if result.total[(provider, o)]]
        lines.append(f"  {provider:<{width}}{count([(provider, o) for o in present]):>7}   "
                     + ", ".join(f"{o} {count([(provider, o)])}" for o in present))
    lines.append("by OS:")
    for os_id in oses:
        lines.append(f"  {os_id:<{width}}{count([(p, os_id) for p in providers if result.total[(p, os_id)]]):>7}")
    lines.append(f"  {'total':<{width}}{count(list(result.total)):>7}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=Path, default=EXAMPLE)
    parser.add_argument("--json", action="store_true", help="the counts as JSON")
    args = parser.parse_args()
    result = coverage(upstream_targets(), provided_targets(args.matrix))
    linux = [n for n in upstream_targets() if "windows" not in n]
    if args.json:
        print(json.dumps({"provided": result.provided_count, "total": result.total_count, "linux_total": len(linux),
                          "extras": len(result.extras),
                          "by_provider_os": {f"{p} {o}": [result.provided[(p, o)], n]
                                             for (p, o), n in sorted(result.total.items())}}, indent=2))
        return
    print(table(result))
    print(f"\nimage-builder targets provided: {result.provided_count} of {result.total_count} "
          f"({len(linux)} Linux); extras (documented in {EXTRAS.relative_to(ROOT)}): {len(result.extras)}")


if __name__ == "__main__":
    main()
