"""Flatcar baked on Outscale (image-builder's build-osc-flatcar): Outscale's Ubuntu VM, with a scratch
volume, writes Flatcar's generic image (the build's Ignition config on its OEM partition) over its root
disk and reboots into it; the shared Flatcar steps follow. The cell plans under image-builder's name,
renders as `packer fmt` writes it, its HCL parses (Packer 1.6.6 lacks the outscale-bsu builder) with the
blocks in order, the download is checked against the sha512 the plan resolved (or the DIGESTS file when
planned --offline), and the Ignition config holds the build's public key and nothing secret. No VM."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import hcl2
import pytest
import yaml

from imagebuilder import flatcar, hcl, sysext
from imagebuilder.baseimages import Resolver, resolve_cells
from imagebuilder.build import Job
from imagebuilder.clouds import registry
from imagebuilder.config import load_matrix
from imagebuilder.planner import plan
from test_flatcar import GENERIC, VERSION, matrix_file, served  # noqa: F401 (served: the Flatcar release fixture)
from test_providers_more import CREDENTIALS, MINOR, cli, unquote, write_matrix

CELL = f"osc-flatcar-k8s-{MINOR}"


def provisioners(parsed: dict) -> list[tuple[str, dict]]:
    """(type, body) of each provisioner of the build, in order."""
    (build,) = parsed["build"]
    return [(unquote(kind), body) for block in build["provisioner"] for kind, body in block.items()
            if not kind.startswith("__")]


def strings(values: list[str]) -> list[str]:
    """The values of HCL string literals as python-hcl2 gives them (quoted and escaped, or not)."""
    return [hcl.unstring(json.loads(value) if value.startswith('"') else value) for value in values]


def test_osc_flatcar_plans_renders_and_parses(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", {"osc": {}}, os_ids=["flatcar", "ubuntu-2404"])
    targets = cli("targets", "-m", str(matrix), "--format", "json", cwd=tmp_path)
    assert targets.returncode == 0, targets.stderr
    assert {"target": "build-osc-flatcar", "cells": [CELL]} in json.loads(targets.stdout)
    cells = {cell.os: cell for cell in plan(load_matrix(matrix))}
    assert cells["flatcar"].strategy == "bake"
    # the Ubuntu OMI it overwrites is Ubuntu's own osc reference
    assert cells["flatcar"].base_image["image_name"] == cells["ubuntu-2404"].base_image["image_name"]

    out = tmp_path / "out"
    result = cli("validate", "-m", str(matrix), "--offline", "-o", str(out), "--packer-version", "1.6.6", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"parsed  {CELL}  (Packer 1.6.6 lacks the outscale-bsu plugin builder" in result.stdout
    for directory in out.iterdir():
        fmt = subprocess.run(["packer", "fmt", "-check", "-diff", str(directory)], capture_output=True, text=True)
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr

    parsed = {path.name: hcl2.loads(path.read_text()) for path in (out / CELL).glob("*.pkr.hcl")}
    sources = {unquote(spec["source"]) for block in parsed["plugins.pkr.hcl"]["packer"]
               for entry in block["required_plugins"] for name, spec in entry.items() if not name.startswith("__")}
    assert "github.com/outscale/outscale" in sources
    (block,) = parsed["osc.pkr.hcl"]["source"]
    source = block.get("outscale-bsu") or block['"outscale-bsu"']
    body = source.get("node") or source['"node"']
    assert strings(body["omi_boot_modes"]) == ["legacy", "uefi"]
    assert [unquote(disk["device_name"]) for disk in body["launch_block_device_mappings"]] == ["/dev/sda1", "/dev/xvdb"]
    assert body["launch_block_device_mappings"][1]["delete_on_vm_deletion"] is True
    assert unquote(body["ssh_private_key_file"]).endswith("/base/id_ed25519")
    assert unquote(body["user_data_file"]).endswith("/base/seed/user-data")

    steps = provisioners(parsed["osc.pkr.hcl"])
    assert [kind for kind, _ in steps] == ["file", "shell", "file", "shell", "shell"]  # no roles on Flatcar
    (_, ignition), (_, install), (_, upload), (_, booted), (_, last) = steps
    assert unquote(ignition["destination"]) == flatcar.IGNITION_UPLOAD
    assert install["expect_disconnect"] is True
    commands = strings(install["inline"])
    assert commands[-1].startswith("sudo sh -c 'dd bs=1M if=/mnt/flatcar-scratch/flatcar_production_image.bin "
                                   "of=/dev/vda ") and "echo b > /proc/sysrq-trigger" in commands[-1]
    # planned --offline: the image of the channel's current release, checked against its DIGESTS file
    assert any("flatcar_production_image.bin.bz2.DIGESTS" in command and "sha512sum -c -" in command
               for command in commands)
    name = sysext.image_name(cells["flatcar"].kubernetes_version, "amd64")
    assert unquote(upload["source"]).endswith(f"sysext/{name}")
    assert "sudo systemd-sysext refresh" in strings(booted["inline"])
    sealed = " ".join(strings(last["inline"]))
    assert "rm -f /usr/share/oem/config.ign" in sealed and "userdel --force --remove outscale" in sealed
    assert f"touch {flatcar.FIRST_BOOT_FLAG}" in sealed and "ignition.config.url=" in sealed

    script = tmp_path / "install.sh"  # the install as Packer runs it: one /bin/sh -e script
    script.write_text("#!/bin/sh -e\n" + "\n".join([*commands, *strings(last["inline"])]) + "\n")
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout

    # Ubuntu on osc is as before: Outscale's Ubuntu OMI, no scratch volume, the roles.
    plain = (out / f"osc-ubuntu-2404-k8s-{MINOR}" / "osc.pkr.hcl").read_text()
    assert "/dev/xvdb" not in plain and "omi_boot_modes" not in plain and 'provisioner "ansible"' in plain


def test_osc_flatcar_is_pinned_and_its_ignition_holds_the_build_key(served, tmp_path: Path,  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, files, _ = served
    monkeypatch.setenv("IMAGEBUILDER_CACHE", str(tmp_path / "cache"))
    loaded = load_matrix(matrix_file(tmp_path, base_url, files, {"osc": {}}))
    (cell,) = resolve_cells(plan(loaded), loaded, Resolver())
    resolved = cell.base_image["resolved"]
    generic = f"{base_url}/flatcar/amd64-usr/{VERSION}/{GENERIC}"
    assert resolved["url"] == generic and resolved["version"] == VERSION
    commands = registry.get("osc").template_context(cell)["flatcar"]["install"]["commands"]
    # the release the plan resolved, checked against the sha512 the plan read
    assert f"curl -fsSL --retry 5 -o /mnt/flatcar-scratch/{GENERIC} '{generic}'" in commands
    assert f"(cd /mnt/flatcar-scratch && {flatcar.sha512_check(generic, resolved['sha512'])})" in commands

    # The check the install runs, run here on the download: the pinned sha512 and the DIGESTS line pass,
    # a changed image fails both.
    work = tmp_path / "scratch"
    work.mkdir()
    urllib.request.urlretrieve(generic, work / GENERIC)  # noqa: S310 (the fixture server)
    assert hashlib.sha512((work / GENERIC).read_bytes()).hexdigest() == resolved["sha512"]
    pinned = flatcar.sha512_check(generic, resolved["sha512"])
    for check in (pinned, flatcar.sha512_check(generic, "")):
        assert subprocess.run(["sh", "-ec", check], cwd=work, capture_output=True).returncode == 0, check
    (work / GENERIC).write_bytes(b"not the release")
    for check in (pinned, flatcar.sha512_check(generic, "")):
        assert subprocess.run(["sh", "-ec", check], cwd=work, capture_output=True).returncode != 0, check

    # Before Packer: the throw-away key, the Ubuntu VM's user data and the Ignition config with it.
    job = Job(cell=cell, directory=tmp_path / cell.id, estimate=1.0)
    registry.get("osc").prepare(job)
    public = (job.directory / "base" / "id_ed25519.pub").read_text().strip()
    ignition_text = (job.directory / "base" / "seed" / flatcar.BUILD_IGNITION).read_text()
    ignition = json.loads(ignition_text)
    assert ignition["ignition"]["version"] == sysext.IGNITION_VERSION
    assert ignition["passwd"]["users"] == [{"name": "outscale", "groups": ["sudo"], "sshAuthorizedKeys": [public]}]
    assert "PRIVATE KEY" not in ignition_text and not any(name in ignition_text for name in CREDENTIALS)
    user_data = (job.directory / "base" / "seed" / "user-data").read_text()
    assert user_data.startswith("#cloud-config\n") and "PRIVATE KEY" not in user_data
    assert yaml.safe_load(user_data) == {"ssh_authorized_keys": [public]}  # the Ubuntu OMI's default user
