"""End to end, as a new user runs it first: `imagebuilder build` of the qemu debian-12 cell.

The real thing, at a small scale: the cached Debian base disk, a real Packer qemu build under
TCG running the real Ansible roles over SSH (release files from the fixture mirror, Debian
packages from Debian's mirror), the boot test of the produced qcow2 with no -kernel, and the
local catalogue. Then a second run skips the cell because its build key is catalogued.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from imagebuilder import qemu, render
from mirror import fixture_lock
from conftest import test_cache_dir as shared_test_cache

pytestmark = pytest.mark.slow

# Inside QEMU's user network the host's loopback is 10.0.2.2: QEMU itself connects to
# 127.0.0.1 on the guest's behalf, so nothing leaves this machine.
GUEST_HOST_ALIAS = "10.0.2.2"


def run_cli(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_build_qemu_debian_12_end_to_end(tmp_path: Path, release_mirror) -> None:
    lock = fixture_lock(release_mirror.files, release_mirror.versions)
    minor = next(iter(lock["minors"]))
    (tmp_path / "versions.lock.yaml").write_text(yaml.safe_dump(lock))
    guest_mirrors = {component: url.replace("127.0.0.1", GUEST_HOST_ALIAS)
                     for component, url in release_mirror.mirrors.items()}
    matrix = {"os": ["debian-12"], "kubernetes": [minor], "clouds": {"qemu": {"accelerator": "auto"}},
              "mirrors": guest_mirrors}
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(matrix))
    env = {**os.environ, "CI": "true", "IMAGEBUILDER_CACHE": str(shared_test_cache()),
           "IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue")}
    build_dir = tmp_path / "build"
    cell_id = f"qemu-debian-12-k8s-{minor}"

    started = time.monotonic()
    result = run_cli("build", "-m", str(tmp_path / "matrix.yaml"), "-o", str(build_dir), env=env, timeout=1700)
    elapsed = time.monotonic() - started
    log = (build_dir / cell_id / "build.log")
    if result.returncode != 0:
        pytest.fail(f"build failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}\n--- build.log tail ---\n"
                    + (log.read_text()[-8000:] if log.exists() else "no log"), pytrace=False)
    print(f"\ne2e qemu build + boot test: {elapsed:.0f} s", file=sys.stderr)

    boot = json.loads((build_dir / cell_id / "boot-test.json").read_text())
    checks = {check["name"]: check for check in boot["checks"]}
    assert boot["ok"], boot
    for name in ("ssh login", "cloud-init", "containerd active", "kubelet enabled", "kubeadm version",
                 "provenance", "validate role"):
        assert checks[name]["ok"], checks[name]
    assert f"v{release_mirror.versions['kubernetes']}" in checks["kubeadm version"]["detail"]

    listed = run_cli("images", "list", "--cloud", "local", "--output", "json", env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    images = json.loads(listed.stdout)
    assert len(images) == 1
    plan = json.loads(run_cli("plan", "-m", str(tmp_path / "matrix.yaml"), "--format", "json", env=env,
                              timeout=120).stdout)
    assert images[0]["build_key"] == plan[0]["build_key"]
    assert images[0]["kubernetes_version"] == f"v{release_mirror.versions['kubernetes']}"
    qcow2 = Path(tmp_path / "catalogue").rglob("*.qcow2")
    image_file = next(qcow2)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image_file)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["actual-size"] < info["virtual-size"]  # sparse and compressed

    # The same image, booted again with a wrong expectation: the boot test must fail it.
    # And it booted through its own GRUB, with the build user gone.
    def booted_by_itself(vm: qemu.Vm) -> list[qemu.Check]:
        cmdline = vm.ssh("cat /proc/cmdline").stdout.strip()
        build_user = vm.ssh(f"id {render.QEMU_BUILD_USER}")
        return [qemu.Check("grub booted it", cmdline.startswith("BOOT_IMAGE=") and "root=UUID=" in cmdline, cmdline),
                qemu.Check("build user removed", build_user.returncode != 0, build_user.stdout.strip())]

    wrong = qemu.boot_test(image_file, {"build_key": "0" * 64}, user="debian", workdir=tmp_path / "wrong-boot",
                           validate=booted_by_itself)
    by_name = {check.name: check for check in wrong.checks}
    assert not wrong.ok
    assert not by_name["provenance"].ok
    assert by_name["grub booted it"].ok, by_name["grub booted it"].detail
    assert by_name["build user removed"].ok

    attempts_before = log.read_text().count("=== attempt")
    again = run_cli("build", "-m", str(tmp_path / "matrix.yaml"), "-o", str(build_dir), env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "skipped" in again.stdout
    assert log.read_text().count("=== attempt") == attempts_before  # Packer did not run again
