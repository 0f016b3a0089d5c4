"""Time the local qemu target end to end, stage by stage: base disk, Packer build, boot test.

Serves the fixture release files on 127.0.0.1 (as the tests do; Debian packages come from
Debian's mirror), runs the real `imagebuilder build` of qemu-debian-12, and prints each
stage. Targets: under 15 minutes end to end without KVM, under 5 with it.
`--fresh` builds the base disk in an empty cache instead of reusing the cached one.
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

GUEST_HOST_ALIAS = "10.0.2.2"  # the host's loopback as QEMU's user network shows it to the guest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fresh", action="store_true", help="build the base disk in an empty cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-qemu-") as tmp:
        work = Path(tmp)
        cache = work / "cache" if args.fresh else Path(os.environ.get("IMAGEBUILDER_TEST_CACHE", ROOT / ".cache/tests"))
        files = build_fixture_release(work / "mirror", DEFAULT_FIXTURE_VERSIONS)
        lock = fixture_lock(files, DEFAULT_FIXTURE_VERSIONS)
        (work / "versions.lock.yaml").write_text(yaml.safe_dump(lock))
        with serve_directory(work / "mirror") as base_url:
            mirrors = {c: u.replace("127.0.0.1", GUEST_HOST_ALIAS) for c, u in mirrors_for(base_url).items()}
            matrix = {"os": ["debian-12"], "kubernetes": list(lock["minors"]), "clouds": {"qemu": {}},
                      "mirrors": mirrors}
            (work / "matrix.yaml").write_text(yaml.safe_dump(matrix))
            env = {**os.environ, "CI": "true", "IMAGEBUILDER_CACHE": str(cache),
                   "IMAGEBUILDER_CATALOGUE": str(work / "catalogue")}

            started = time.monotonic()
            debian.base_disk(cache=cache)
            base_seconds = time.monotonic() - started
            result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "build", "-m", str(work / "matrix.yaml"),
                                     "-o", str(work / "build")], env=env, capture_output=True, text=True)
            total = time.monotonic() - started
        if result.returncode != 0:
            sys.exit(f"build failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        cell_dir = next((work / "build").iterdir())
        boot = json.loads((cell_dir / "boot-test.json").read_text())
        log = (cell_dir / "build.log").read_text()
        packer = re.search(r"Build 'qemu.node' finished after (.*)\.", log)
        boot_seconds = sum(boot["seconds"].values())
    accel = "kvm" if "qemu_accelerator=kvm" in log else "tcg"
    print(f"qemu end to end ({accel}): base disk {base_seconds:.0f} s{' (cached)' if not args.fresh else ''}, "
          f"packer build {packer.group(1) if packer else '?'}, boot test {boot_seconds:.0f} s "
          f"(ssh {boot['seconds'].get('ssh_up', 0):.0f} s), total {total:.0f} s "
          f"(target < 900 s without KVM)")


if __name__ == "__main__":
    main()
