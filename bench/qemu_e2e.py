"""Time the local qemu target end to end, both builders, stage by stage, and their ratio.

Serves the fixture release files on 127.0.0.1 (as the tests do; Debian packages come from
Debian's mirror) and runs the real `imagebuilder build` of qemu-debian-12 twice: with
`builder: offline` (the roles applied to the base tree, the default without KVM) and with
`builder: packer` (the qemu template in a VM). Prints base, build stages and boot test for
each, then offline/packer. Targets without KVM: offline under 300 s with the base cached,
under 420 s cold, boot-test checks under 20 s.
`--fresh` builds the base in an empty cache; `--only offline|packer` runs one path; the
cell's ansible_vars can be given with `--package-runtime` (Debian's containerd and runc).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from mirror import DEFAULT_FIXTURE_VERSIONS, build_fixture_release, fixture_lock, mirrors_for, serve_directory  # noqa: E402

from imagebuilder.distributions import debian  # noqa: E402

# The offline build fetches on the host; a Packer build VM sees the host's loopback as 10.0.2.2.
HOST_ALIAS = {"offline": "127.0.0.1", "packer": "10.0.2.2"}


def build_once(work: Path, base_url: str, lock: dict, builder: str, cache: Path, ansible_vars: dict) -> dict:
    mirrors = {c: u.replace("127.0.0.1", HOST_ALIAS[builder]) for c, u in mirrors_for(base_url).items()}
    matrix = {"os": ["debian-12"], "kubernetes": list(lock["minors"]), "clouds": {"qemu": {"builder": builder}},
              "mirrors": mirrors}
    if ansible_vars:
        matrix["overrides"] = [{"match": {"os": "debian-12"}, "ansible_vars": ansible_vars}]
    directory = work / builder
    directory.mkdir()
    (directory / "matrix.yaml").write_text(yaml.safe_dump(matrix))
    (directory / "versions.lock.yaml").write_text(yaml.safe_dump(lock))
    env = {**os.environ, "CI": "true", "IMAGEBUILDER_CACHE": str(cache),
           "IMAGEBUILDER_CATALOGUE": str(directory / "catalogue")}
    started = time.monotonic()
    skip = ["--skip-preflight"] if HOST_ALIAS[builder] != "127.0.0.1" else []  # 10.0.2.2 is the VM's name
    result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "build", "-m", str(directory / "matrix.yaml"),
                             "-o", str(directory / "build"), "--offline", *skip], env=env, capture_output=True, text=True,
                            cwd=directory, stdin=subprocess.DEVNULL)
    total = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{builder} build failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    cell_dir = next((directory / "build").iterdir())
    boot = json.loads((cell_dir / "boot-test.json").read_text())
    stages: dict[str, float] = {}
    if builder == "offline":
        stages = json.loads((cell_dir / "offline-stages.json").read_text())
        stages.pop("base", None)
    else:
        log = (cell_dir / "build.log").read_text()
        found = re.search(r"Build 'qemu.node' finished after (?:(\d+) minutes? )?(?:(\d+) seconds?)?", log)
        if found:
            stages["packer"] = float(int(found.group(1) or 0) * 60 + int(found.group(2) or 0))
    return {"total": total, "stages": stages, "boot": boot["seconds"], "checks": len(boot["checks"])}


def line(builder: str, figures: dict) -> str:
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in figures["stages"].items())
    boot = figures["boot"]
    return (f"{builder:<8} total {figures['total']:.0f} s  [{stages}]  boot test {boot.get('total', 0):.0f} s "
            f"(ssh up {boot.get('ssh_up', 0):.0f} s, {figures['checks']} checks in {boot.get('checks', 0):.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fresh", action="store_true", help="build the base in an empty cache")
    parser.add_argument("--only", choices=sorted(HOST_ALIAS), help="time one builder only")
    parser.add_argument("--package-runtime", action="store_true",
                        help="containerd_install_method: package (Debian's containerd and runc)")
    args = parser.parse_args()
    builders = [args.only] if args.only else ["offline", "packer"]
    # The fixture crictl only prints its version: the validate role's `crictl info` check is off.
    ansible_vars = {"validate_cri_checks": False,
                    **({"containerd_install_method": "package"} if args.package_runtime else {})}
    with tempfile.TemporaryDirectory(prefix="bench-qemu-") as tmp:
        work = Path(tmp)
        cache = work / "cache" if args.fresh else Path(os.environ.get("IMAGEBUILDER_TEST_CACHE", ROOT / ".cache/tests"))
        files = build_fixture_release(work / "mirror", DEFAULT_FIXTURE_VERSIONS)
        lock = fixture_lock(files, DEFAULT_FIXTURE_VERSIONS)
        load = os.getloadavg()[0]
        started = time.monotonic()
        debian.base_disk(cache=cache)
        base_seconds = time.monotonic() - started
        results: dict[str, dict] = {}
        with serve_directory(work / "mirror") as base_url:
            for builder in builders:
                results[builder] = build_once(work, base_url, lock, builder, cache, ansible_vars)
    print(f"qemu end to end without KVM (tcg), load average {load:.1f} at start on {os.cpu_count()} cores; "
          f"base {base_seconds:.0f} s{' (cold)' if args.fresh else ' (cached)'}")
    for builder, figures in results.items():
        print(line(builder, figures))
    if "offline" in results:
        end_to_end = results["offline"]["total"] + base_seconds
        target = 420 if args.fresh else 300
        print(f"offline end to end incl. base: {end_to_end:.0f} s (target < {target} s)")
    if len(results) == 2:
        print(f"offline / packer: {results['offline']['total'] / results['packer']['total']:.2f} "
              f"(packer takes {results['packer']['total'] / results['offline']['total']:.1f}x as long)")


if __name__ == "__main__":
    main()
