"""The oci, scaleway and digitalocean cloud folders (builders Packer 1.6.6 carries) and the osc,
nutanix, vultr, oxide and huaweicloud ones (builders only a plugin has): the first render and pass
`packer validate` without credentials or network, the others' HCL parses with python-hcl2 and names
its plugin in required_plugins, and `imagebuilder validate` says so in one line per cell. Their
image-builder target names come out, and a bad setting is one line. Their images are not managed
(store_path None), as tests/test_unmanaged_cloud.py checks of such clouds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from imagebuilder.config import PROJECT_ROOT

MINOR = next(iter(yaml.safe_load((PROJECT_ROOT / "versions.lock.yaml").read_text())["minors"]))
CREDENTIALS = ("SCW_ACCESS_KEY", "SCW_SECRET_KEY", "SCW_DEFAULT_PROJECT_ID", "DIGITALOCEAN_API_TOKEN",
               "DIGITALOCEAN_TOKEN", "OUTSCALE_ACCESSKEYID", "OUTSCALE_SECRETKEYID", "VULTR_API_KEY",
               "NUTANIX_USERNAME", "NUTANIX_PASSWORD", "OXIDE_HOST", "OXIDE_TOKEN", "HW_ACCESS_KEY", "HW_SECRET_KEY")
OCI = {"availability_domain": "Uocm:US-ASHBURN-AD-1", "compartment_ocid": "ocid1.compartment.oc1..example",
       "subnet_ocid": "ocid1.subnet.oc1..example"}
NUTANIX = {"endpoint": "prism.example.com", "cluster_name": "cluster1", "subnet_name": "vlan10"}
OXIDE = {"project": "capi", "boot_disk_image_ids": {"ubuntu-24.04": "0b8f6c1e-5f4e-4a47-9d35-6f3c1b2a9e10"}}
HUAWEICLOUD = {"vpc_id": "vpc-example", "subnet_id": "subnet-example"}
# cloud -> (its Packer builder, its plugin's source)
PLUGIN_ONLY = {"osc": ("outscale-bsu", "github.com/outscale/outscale"),
               "nutanix": ("nutanix", "github.com/nutanix-cloud-native/nutanix"),
               "vultr": ("vultr", "github.com/vultr/vultr"),
               "oxide": ("oxide-instance", "github.com/oxidecomputer/oxide"),
               "huaweicloud": ("huaweicloud-ecs", "github.com/huaweicloud/huaweicloud")}


def write_matrix(path: Path, clouds: dict[str, Any], os_ids: list[str] | None = None, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"versions_file": str(PROJECT_ROOT / "versions.lock.yaml"),
                                    "os": os_ids or ["ubuntu-2204"], "kubernetes": [MINOR], "clouds": clouds, **extra}))
    return path


def cli(*args: str, cwd: Path, without: tuple[str, ...] = CREDENTIALS) -> subprocess.CompletedProcess[str]:
    """imagebuilder as a user runs it, with the clouds' credentials (`without`) out of the environment."""
    env = {name: value for name, value in os.environ.items() if name not in without}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def unquote(text: str) -> str:
    """python-hcl2 5 keeps a string's quotes; 4 does not."""
    return text[1:-1] if text.startswith('"') and text.endswith('"') else text


def oci_config(directory: Path) -> Path:
    """A stand-in OCI SDK configuration with a throw-away key: the oracle-oci builder's check reads
    it and connects nowhere. Packer 1.6.6's SDK reads PKCS#1 keys only (-traditional)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "key.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"], check=True, capture_output=True)
    config = directory / "config"
    config.write_text(f"[DEFAULT]\nuser=ocid1.user.oc1..validate\nfingerprint=11:22:33:44:55:66:77:88:99:00:aa:bb:cc:dd:ee:ff\n"
                      f"key_file={key}\ntenancy=ocid1.tenancy.oc1..validate\nregion=us-ashburn-1\n")
    return config


@pytest.mark.skipif(shutil.which("packer") is None or shutil.which("openssl") is None, reason="needs packer, openssl")
def test_the_built_in_builders_pass_packer_validate_without_credentials(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", {
        "oci": {**OCI, "access_cfg_file": str(oci_config(tmp_path / "oci"))}, "scaleway": {}, "do": {}},
        os_ids=["ubuntu-2204", "rockylinux-9"], arch=["amd64", "arm64"],
        exclude=[{"os": "rockylinux-9", "cloud": "oci"}, {"arch": "arm64", "cloud": "oci"},
                 {"arch": "arm64", "cloud": "digitalocean"}, {"arch": "arm64", "os": "rockylinux-9"}])
    out = tmp_path / "out"
    result = cli("validate", "-m", str(matrix), "--offline", "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok ")) == sorted(
        f"{cell}-k8s-{MINOR}" for cell in (
            "oci-ubuntu-2204", "scaleway-ubuntu-2204", "scaleway-ubuntu-2204-arm64", "scaleway-rockylinux-9",
            "digitalocean-ubuntu-2204", "digitalocean-rockylinux-9")), result.stdout
    for cell in out.iterdir():
        fmt = subprocess.run(["packer", "fmt", "-check", "-diff", str(cell)], capture_output=True, text=True)
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr
        text = (cell / f"{cell.name.split('-')[0]}.pkr.hcl").read_text()
        assert 'provisioner "ansible"' in text and 'post-processor "manifest"' in text  # the shared build step
        assert not (cell / "plugins.pkr.hcl").exists()  # Packer 1.6.6 has these built in
    variables = {cell.name: (cell / "cell.auto.pkrvars.hcl").read_text() for cell in out.iterdir()}

    def value(cell: str, name: str) -> str:
        (found,) = re.findall(rf'^{name} += "([^"]*)"$', variables[f"{cell}-k8s-{MINOR}"], re.MULTILINE)
        return found

    assert value("oci-ubuntu-2204", "oci_operating_system_version") == "22.04"
    assert value("scaleway-ubuntu-2204-arm64", "scaleway_commercial_type") == "AMP2-C1"
    assert value("digitalocean-rockylinux-9", "digitalocean_image") == "rockylinux-9-x64"
    assert value("digitalocean-ubuntu-2204", "image_name_prefix").startswith("cluster-api-ubuntu-2204-v")
    for cell in out.iterdir():  # no stand-in credential in any rendered file
        for path in cell.rglob("*"):
            assert not path.is_file() or "validate-only" not in path.read_text(errors="replace"), path

    # Without the SDK's configuration the builder's check names what it lacks, in validate's report.
    bare = write_matrix(tmp_path / "bare.yaml", {"oci": {**OCI, "access_cfg_file": str(tmp_path / "none")}})
    result = cli("validate", "-m", str(bare), "--offline", "-o", str(tmp_path / "bare"), cwd=tmp_path)
    assert result.returncode != 0 and f"FAILED  oci-ubuntu-2204-k8s-{MINOR}" in result.stdout
    assert "'user_ocid' must be specified" in result.stderr and "'key_file' must be specified" in result.stderr


def test_the_plugin_builders_parse_and_name_their_plugin(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", {"osc": {}, "nutanix": NUTANIX, "vultr": {}, "oxide": OXIDE,
                                                     "huaweicloud": HUAWEICLOUD},
                          os_ids=["ubuntu-2204", "ubuntu-2404"],
                          exclude=[{"os": "ubuntu-2204", "cloud": "oxide"}, {"os": "ubuntu-2404", "cloud": "huaweicloud"}])
    out = tmp_path / "out"
    # Packer 1.6.6 (the one installed here, named so that the test does not depend on it)
    result = cli("validate", "-m", str(matrix), "--offline", "-o", str(out), "--packer-version", "1.6.6", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "8 valid, 0 invalid", lines
    for cloud, (builder, source) in PLUGIN_ONLY.items():
        cells = [line for line in lines if line.startswith(f"parsed  {cloud}-")]
        assert len(cells) == (1 if cloud in ("oxide", "huaweicloud") else 2), lines
        assert all(line.endswith(f"(Packer 1.6.6 lacks the {builder} plugin builder ({source}), which needs Packer "
                                 ">= 1.7 and `packer init`; the HCL was parsed with python-hcl2 instead)")
                   for line in cells), cells
    for cell in out.iterdir():
        cloud = cell.name.split("-")[0]
        builder, source = PLUGIN_ONLY[cloud]
        parsed = {path.name: hcl2.loads(path.read_text()) for path in cell.glob("*.pkr.hcl")}
        sources = {unquote(spec["source"]) for block in parsed["plugins.pkr.hcl"]["packer"]
                   for entry in block["required_plugins"] for name, spec in entry.items() if not name.startswith("__")}
        assert sources == {source, "github.com/hashicorp/ansible"}, sources
        (block,) = parsed[f"{cloud}.pkr.hcl"]["source"]
        assert [unquote(name) for name in block if not name.startswith("__")] == [builder], block
        build = parsed[f"{cloud}.pkr.hcl"]["build"][0]
        assert "ansible" in {unquote(name) for provisioner in build["provisioner"] for name in provisioner}
    nutanix = (out / f"nutanix-ubuntu-2204-k8s-{MINOR}" / "nutanix.pkr.hcl").read_text()
    assert 'env("NUTANIX_PASSWORD")' in nutanix and "userdel --force --remove builder" in nutanix
    oxide = (out / f"oxide-ubuntu-2404-k8s-{MINOR}" / "cell.auto.pkrvars.hcl").read_text()
    assert OXIDE["boot_disk_image_ids"]["ubuntu-24.04"] in oxide


def test_a_plugin_builder_needs_a_packer_that_installs_plugins() -> None:
    from imagebuilder.clouds import registry

    assert registry.get("vultr").plugin_missing((1, 6, 6)) is not None
    assert registry.get("vultr").plugin_missing((1, 11, 2)) is None
    assert registry.get("scaleway").plugin_missing((1, 6, 6)) is None  # built in


def test_the_nutanix_build_step_writes_user_data_with_a_throw_away_key(tmp_path: Path) -> None:
    from imagebuilder.build import Job
    from imagebuilder.clouds import registry
    from imagebuilder.config import load_matrix
    from imagebuilder.planner import plan

    (cell,) = plan(load_matrix(write_matrix(tmp_path / "matrix.yaml", {"nutanix": NUTANIX})))
    job = Job(cell=cell, directory=tmp_path / cell.id, estimate=1.0)
    registry.get("nutanix").prepare(job)
    public = (job.directory / "base" / "id_ed25519.pub").read_text().strip()
    user_data = (job.directory / "base" / "seed" / "user-data").read_text()
    assert user_data.startswith("#cloud-config\n")
    (user,) = yaml.safe_load(user_data)["users"]
    assert user["name"] == "builder" and user["ssh_authorized_keys"] == [public] and user["lock_passwd"] is True


def test_image_builder_target_names_come_out(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", {
        "oci": OCI, "osc": {}, "scaleway": {}, "do": {}, "nutanix": NUTANIX, "vultr": {}, "oxide": OXIDE,
        "huaweicloud": HUAWEICLOUD}, os_ids=["ubuntu-2404"], exclude=[{"cloud": "huaweicloud"}])
    result = cli("targets", "-m", str(matrix), "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = {entry["target"]: entry["cells"] for entry in json.loads(result.stdout)}
    assert found == {f"build-{provider}-ubuntu-2404": [f"{cloud}-ubuntu-2404-k8s-{MINOR}"] for provider, cloud in (
        ("oci", "oci"), ("osc", "osc"), ("scaleway", "scaleway"), ("do", "digitalocean"), ("nutanix", "nutanix"),
        ("vultr", "vultr"), ("oxide", "oxide"))}
    # `make build-do-ubuntu-2404` passes this to --only
    planned = cli("plan", "-m", str(matrix), "--offline", "--format", "json", "--only", "do-ubuntu-2404-k8s-*",
                  cwd=tmp_path)
    assert [cell["id"] for cell in json.loads(planned.stdout)] == [f"digitalocean-ubuntu-2404-k8s-{MINOR}"]
    listed = cli("images", "list", "-m", str(matrix), "--output", "json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split(":")[1].strip() for line in listed.stderr.splitlines()) == sorted(
        ["oci", "osc", "scaleway", "digitalocean", "nutanix", "vultr", "oxide", "huaweicloud"])
    assert all("images are not managed yet" in line for line in listed.stderr.splitlines())


@pytest.mark.parametrize(("cloud", "settings", "expected"), [
    ("oci", {k: v for k, v in OCI.items() if k != "compartment_ocid"}, "compartment_ocid"),
    ("oci", {**OCI, "ocpus": 0}, "ocpus"),
    ("digitalocean", {"api_token": "hunter2"}, "api_token"),
    ("scaleway", {"secret_key": "hunter2"}, "secret_key"),
    ("nutanix", {**NUTANIX, "port": 0}, "port"),
    ("nutanix", {**NUTANIX, "password": "hunter2"}, "password"),
    ("huaweicloud", {"vpc_id": "vpc-1"}, "subnet_id"),
    ("oxide", {}, "project"),
])
def test_a_bad_setting_is_one_line(tmp_path: Path, cloud: str, settings: dict[str, Any], expected: str) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", {cloud: settings})
    result = cli("plan", "-m", str(matrix), "--offline", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"imagebuilder: {matrix}:") and expected in line, line
    assert "hunter2" not in line  # a value is never echoed


def test_an_oxide_image_without_its_id_is_one_line(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", {"oxide": {"project": "capi"}}, os_ids=["ubuntu-2404"])
    result = cli("render", "-m", str(matrix), "--offline", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "--offline" not in line]  # besides --offline's notice
    assert "clouds.oxide.boot_disk_image_ids: no id for the silo image 'ubuntu-24.04'" in line and "| fix:" in line
