"""The powervs cloud folder (IBM Power Virtual Server; its builder only a plugin has): ppc64le cells
from the OVAs image-builder imports, the dhcp variant, its HCL parsed with python-hcl2 naming the
plugin, image-builder's target names, downloads pinned for ppc64le, and no other arch built there."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from imagebuilder.config import PROJECT_ROOT, load_matrix
from imagebuilder.errors import UserError
from imagebuilder.pipeline import unbuilt_arch
from imagebuilder.planner import key_material, plan
from test_providers_more import cli as providers_cli
from test_providers_more import unquote

MINOR = next(iter(yaml.safe_load((PROJECT_ROOT / "versions.lock.yaml").read_text())["minors"]))
POWERVS = {"service_instance_id": "0123-example", "key_pair_name": "capi", "ssh_private_key_file": "/keys/capi",
           "capture_cos_bucket": "capi-images"}
CREDENTIALS = ("IBMCLOUD_API_KEY", "IBM_COS_ACCESS_KEY_ID", "IBM_COS_SECRET_ACCESS_KEY")


def write_matrix(path: Path, **extra: Any) -> Path:
    matrix = {"versions_file": str(PROJECT_ROOT / "versions.lock.yaml"), "os": ["centos-9", "centos-10"],
              "kubernetes": [MINOR], "arch": ["ppc64le"],
              "clouds": {"powervs": {**POWERVS, "variants": ["dhcp"]}},
              "exclude": [{"os": "centos-9", "variant": "dhcp"}], **extra}
    path.write_text(yaml.safe_dump(matrix))
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return providers_cli(*args, cwd=cwd, without=CREDENTIALS)


def test_cells_are_ppc64le_from_image_builders_ovas_and_dhcp_is_its_own(tmp_path: Path) -> None:
    cells = {c.id: c for c in plan(load_matrix(write_matrix(tmp_path / "m.yaml")))}
    assert sorted(cells) == [f"powervs-centos-10-ppc64le-dhcp-k8s-{MINOR}", f"powervs-centos-10-ppc64le-k8s-{MINOR}",
                             f"powervs-centos-9-ppc64le-k8s-{MINOR}"]
    plain, dhcp = cells[f"powervs-centos-10-ppc64le-k8s-{MINOR}"], cells[f"powervs-centos-10-ppc64le-dhcp-k8s-{MINOR}"]
    assert plain.base_image == {"bucket": "power-oss-bucket", "object": "centos-streams-10.ova.gz", "region": "us-south"}
    assert dhcp.base_image["object"] == "centos-streams-10-dhcp.ova.gz"
    assert plain.image_name.startswith("capibm-powervs-centos-10-") and "dhcp" in dhcp.image_name
    assert plain.downloads["kubelet"].url.endswith("/bin/linux/ppc64le/kubelet")
    assert plain.downloads["runc"].url.endswith("/runc.ppc64le")
    assert all(len(d.sha256) == 64 for d in plain.downloads.values())
    # a ppc64le key hashes the ppc64le sums; the amd64 and arm64 ones as every key did before they were pinned
    sums = key_material(plain, {"components": {"runc": {"version": "1", "files": {"runc": {"path": "p", "sha256": {
        "amd64": "a", "arm64": "b", "ppc64le": "c"}}}}}})["pins"]["components"]["runc"]["files"]["runc"]["sha256"]
    assert sums == {"amd64": "a", "arm64": "b", "ppc64le": "c"}
    amd = key_material(plain.__class__(**{**plain.__dict__, "arch": "amd64"}), {"components": {"runc": {
        "version": "1", "files": {"runc": {"path": "p", "sha256": {"amd64": "a", "arm64": "b", "ppc64le": "c"}}}}}})
    assert amd["pins"]["components"]["runc"]["files"]["runc"]["sha256"] == {"amd64": "a", "arm64": "b"}
    unbuilt_arch(plain)


def test_no_other_arch_is_built_on_powervs(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "m.yaml", arch=["amd64"], exclude=[{"variant": "dhcp"}])
    # the OS table has no amd64 reference on powervs: the plan refuses with the exclude that fixes it
    result = cli("plan", "-m", str(matrix), "--offline", cwd=tmp_path)
    assert result.returncode == 2 and "centos-9 has no amd64 base image on powervs" in result.stderr, result.stderr
    (cell,) = [c for c in plan(load_matrix(write_matrix(tmp_path / "p.yaml", os=["centos-9"])))]
    with pytest.raises(UserError, match=r"^powervs-centos-9-k8s-.*: powervs builds ppc64le images only \(Power "
                                        r"Virtual Server runs POWER machines\) \| fix: exclude \{cloud: powervs, arch: amd64\}$"):
        unbuilt_arch(cell.__class__(**{**cell.__dict__, "arch": "amd64", "id": f"powervs-centos-9-k8s-{MINOR}"}))


def test_the_hcl_parses_names_its_plugin_and_the_targets_are_image_builders(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "m.yaml")
    out = tmp_path / "out"
    result = cli("validate", "-m", str(matrix), "--offline", "-o", str(out), "--packer-version", "1.6.6", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "3 valid, 0 invalid"
    assert all("lacks the powervs plugin builder (github.com/ppc64le-cloud/powervs)" in line
               for line in result.stdout.splitlines()[:-1])
    for cell in out.iterdir():
        parsed = {path.name: hcl2.loads(path.read_text()) for path in cell.glob("*.pkr.hcl")}
        sources = {unquote(spec["source"]) for block in parsed["plugins.pkr.hcl"]["packer"]
                   for entry in block["required_plugins"] for name, spec in entry.items() if not name.startswith("__")}
        assert "github.com/ppc64le-cloud/powervs" in sources
        (block,) = parsed["powervs.pkr.hcl"]["source"]
        assert [unquote(name) for name in block if not name.startswith("__")] == ["powervs"]
        template = (cell / "powervs.pkr.hcl").read_text()
        assert 'env("IBMCLOUD_API_KEY")' in template and 'destination = "cloud-storage"' in template
        values = hcl2.loads((cell / "cell.auto.pkrvars.hcl").read_text())
        assert values["powervs_dhcp_network"] is ("dhcp" in cell.name)
        assert "account_id" not in template  # none set: the builder finds it from the API key
    targets = cli("targets", "-m", str(matrix), "--format", "json", cwd=tmp_path)
    found = {entry["target"]: entry["cells"] for entry in json.loads(targets.stdout)}
    assert found == {"build-powervs-centos-9": [f"powervs-centos-9-ppc64le-k8s-{MINOR}"],
                     "build-powervs-centos-10": [f"powervs-centos-10-ppc64le-k8s-{MINOR}"],
                     "build-powervs-centos-10-dhcp": [f"powervs-centos-10-ppc64le-dhcp-k8s-{MINOR}"]}
    listed = cli("images", "list", "-m", str(matrix), "--output", "json", cwd=tmp_path)
    assert listed.returncode == 0 and "powervs: images are not managed yet" in listed.stderr, listed.stderr
