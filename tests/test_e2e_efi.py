"""The qemu `efi` variant end to end: `imagebuilder build` of qemu-debian-12-efi through the offline
builder, from the same cached Debian base, release mirror and registry mirror as the BIOS cell of
tests/test_e2e_qemu.py (its fixtures), then the boot test under OVMF, which must find the guest
booted by UEFI. The made disk is GPT with the EFI system partition (FAT32, shim as
EFI/BOOT/BOOTX64.EFI) and the root as partition 1.
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

from conftest import test_cache_dir as shared_test_cache
from imagebuilder.distributions import debian
from mirror import fixture_lock
from test_e2e_qemu import (  # noqa: F401 - base_ready is a fixture, shared with the BIOS cell's test
    CELL_VARS,
    HOST_ALIAS,
    OFFLINE_TIMEOUT,
    CellBuild,
    assert_built_boot_tested_catalogued,
    base_ready,
    run_cli,
    signing_key_pem,
)

pytestmark = pytest.mark.slow

ESP_HEAD_MIB = (debian.EFI_ROOT_START // 1024**2) + 1  # the GPT and the whole ESP


def efi_cell_build(work: Path, release_mirror, image_registry) -> CellBuild:
    """The BIOS cell's matrix with `variants: [efi]` and the default (BIOS) cell excluded."""
    work.mkdir(parents=True, exist_ok=True)
    lock = fixture_lock(release_mirror.files, release_mirror.versions, images=image_registry.lock)
    minor = next(iter(lock["minors"]))
    (work / "versions.lock.yaml").write_text(yaml.safe_dump(lock))
    mirrors = {component: url for component, url in release_mirror.mirrors.items()}
    mirrors["registry"] = "http://" + image_registry.address
    assert HOST_ALIAS["offline"] == "127.0.0.1"  # the offline build fetches on this host
    matrix = {"os": ["debian-12"], "kubernetes": [minor],
              "clouds": {"qemu": {"builder": "offline", "variants": ["efi"]}},
              "exclude": [{"cloud": "qemu", "variant": "none"}], "mirrors": mirrors,
              "overrides": [{"match": {"os": "debian-12"}, "ansible_vars": CELL_VARS}]}
    (work / "matrix.yaml").write_text(yaml.safe_dump(matrix))
    env = {**os.environ, "CI": "true", "IMAGEBUILDER_CACHE": str(shared_test_cache()),
           "IMAGEBUILDER_CATALOGUE": str(work / "catalogue"), "IMAGEBUILDER_QEMU_ACCEL": "tcg",
           "IMAGEBUILDER_SIGNING_KEY": signing_key_pem(work)}
    return CellBuild(builder="offline", work=work, env=env, cell_id=f"qemu-debian-12-efi-k8s-{minor}")


def test_efi_variant_builds_a_gpt_esp_disk_that_boots_under_ovmf(base_ready, release_mirror, image_registry,
                                                                  tmp_path: Path) -> None:
    build = efi_cell_build(tmp_path / "efi", release_mirror, image_registry)
    started = time.monotonic()
    build.result = run_cli(*build.command()[3:], env=build.env, timeout=OFFLINE_TIMEOUT)
    build.seconds = time.monotonic() - started

    boot = assert_built_boot_tested_catalogued(build, release_mirror, image_registry)
    checks = {check["name"]: check for check in boot["checks"]}
    assert checks["booted by efi firmware"]["ok"], checks["booted by efi firmware"]
    assert "/sys/firmware/efi exists" in checks["booted by efi firmware"]["detail"]
    stages = json.loads((build.cell_dir / "offline-stages.json").read_text())
    print(f"efi offline stages: {stages}; boot test {boot['seconds']}", file=sys.stderr)

    # The catalogued qcow2's disk: GPT, the root ext4 partition 1 at 128 MiB, partition 15 the ESP
    # holding shim (removable path) and Debian's signed GRUB.
    # Its first 129 MiB, sparse to the full size: the primary GPT is read (the backup, at the end, is not copied).
    head = tmp_path / "head.raw"
    subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=1M", f"count={ESP_HEAD_MIB}",
                    f"if={build.image()}", f"of={head}"], check=True, capture_output=True)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(build.image())], capture_output=True,
                                     text=True, check=True).stdout)
    os.truncate(head, info["virtual-size"])
    table = subprocess.run(["sfdisk", "--json", str(head)], capture_output=True, text=True)
    parts = {p["node"][len(str(head)):]: p for p in json.loads(table.stdout)["partitiontable"]["partitions"]}
    assert parts["15"]["type"] == debian.ESP_TYPE and parts["1"]["start"] * 512 == debian.EFI_ROOT_START
    listing = subprocess.run(["mdir", "-b", "-i", f"{head}@@{debian.ESP_START}", "::/EFI/BOOT"],
                             capture_output=True, text=True)
    assert {"BOOTX64.EFI", "grubx64.efi", "grub.cfg"} <= {Path(line).name for line in listing.stdout.split()}, \
        listing.stdout + listing.stderr

