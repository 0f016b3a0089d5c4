"""Rendering cells as Packer HCL2: determinism, escaping, both Packer forms, packer validate and fmt."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest
import yaml
from hcl2.utils import SerializationOptions
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from imagebuilder import hcl
from imagebuilder.config import PROJECT_ROOT, load_matrix
from imagebuilder.packer import parse_version
from imagebuilder.planner import plan
from imagebuilder.render import render_cells, render_files

from keystone import keystone, openstack_env

DATA = Path(__file__).parent / "data"
OLD_PACKER = (1, 6, 6)
MODERN_PACKER = (1, 11, 2)
STRIP = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)


def load_hcl(text: str) -> dict:
    return hcl2.loads(text, serialization_options=STRIP)


def all_cells_matrix(tmp_path: Path, **cloud_settings: dict) -> Path:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    clouds = {"qemu": {}, "aws": {}, "gcp": {"project_id": "p"}, "openstack": {}, "azure": {"resource_group": "rg"}}
    for cloud, values in cloud_settings.items():
        clouds[cloud] = {**clouds[cloud], **values}
    matrix = {"os": ["debian-12", "ubuntu-2204"], "kubernetes": ["1.31"], "clouds": clouds}
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix))
    return path


def test_render_is_deterministic(tmp_path: Path) -> None:
    cells = plan(load_matrix(all_cells_matrix(tmp_path)))
    first = render_cells(cells, tmp_path / "one", OLD_PACKER)
    second = render_cells(cells, tmp_path / "one-again", OLD_PACKER)
    for a, b in zip(first, second):
        for name in a.files:
            assert (a.directory / name).read_bytes() == (b.directory / name).read_bytes(), name
    # Re-rendering in place leaves the bytes (and mtimes) as they were.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "one").rglob("*") if p.is_file()}
    render_cells(cells, tmp_path / "one", OLD_PACKER)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "one").rglob("*") if p.is_file()}


def test_every_cloud_renders_its_builder_and_metadata(tmp_path: Path) -> None:
    cells = plan(load_matrix(all_cells_matrix(tmp_path)))
    builders = {"qemu": "qemu", "aws": "amazon-ebs", "gcp": "googlecompute", "openstack": "openstack",
                "azure": "azure-arm"}
    for rendered in render_cells(cells, tmp_path / "out", OLD_PACKER):
        cloud = rendered.cell.cloud
        template = load_hcl((rendered.directory / f"{cloud}.pkr.hcl").read_text())
        assert builders[cloud] in template["source"][0]
        values = load_hcl((rendered.directory / "cell.auto.pkrvars.hcl").read_text())
        assert values["metadata"]["imagebuilder-build-key"] == rendered.cell.build_key
        assert values["metadata"]["imagebuilder-kubernetes-version"] == f"v{rendered.cell.kubernetes_version}"
        build = template["build"][0]
        manifest = build["post-processor"][0]["manifest"]
        assert "custom_data" in manifest
        steps = [(name, body) for block in build["provisioner"] for name, body in block.items()]
        provisioners = dict(steps[:2])
        assert [name for name, _ in steps] == ["shell", "ansible", "shell", "file", "shell"]
        assert provisioners["ansible"]["use_proxy"] is False
        assert "cloud-init status --wait" in provisioners["shell"]["inline"]
        assert ("sudo grub-install /dev/vda" in provisioners["shell"]["inline"]) == (
            rendered.cell.cloud == "qemu" and rendered.cell.os == "debian-12")
        # After the roles: the SBOM's contents gathered in the image and downloaded beside the manifest.
        gather, download, remove = (body for _, body in steps[2:])
        assert gather["script"] == "${path.root}/sbom-input.sh" and (rendered.directory / "sbom-input.sh").is_file()
        assert download["direction"] == "download" and download["destination"] == "${path.root}/sbom-input.txt"
        assert remove["inline"] == [f"rm -f {download['source']}"]
        ansible_vars = json.loads((rendered.directory / "ansible-vars.json").read_text())
        assert ansible_vars["imagebuilder_build_key"] == rendered.cell.build_key
        assert ansible_vars["imagebuilder_downloads"]["kubeadm"]["sha256"] == rendered.cell.downloads["kubeadm"].sha256
    gcp = next(r for r in render_cells(cells, tmp_path / "out", OLD_PACKER) if r.cell.cloud == "gcp")
    labels = load_hcl((gcp.directory / "cell.auto.pkrvars.hcl").read_text())["gcp_image_labels"]
    assert all(set(v) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_") for v in labels.values())


def test_packer_forms(tmp_path: Path) -> None:
    cells = plan(load_matrix(all_cells_matrix(tmp_path)))
    old = render_cells(cells, tmp_path / "old", OLD_PACKER)
    modern = render_cells(cells, tmp_path / "modern", MODERN_PACKER)
    assert all("plugins.pkr.hcl" not in r.files for r in old)
    for rendered in modern:
        plugins = load_hcl((rendered.directory / "plugins.pkr.hcl").read_text())["packer"][0]["required_plugins"][0]
        assert plugins["ansible"]["source"] == "github.com/hashicorp/ansible"
        expected = {"qemu": "qemu", "aws": "amazon", "gcp": "googlecompute", "openstack": "openstack",
                    "azure": "azure"}[rendered.cell.cloud]
        assert plugins[expected]["source"] == f"github.com/hashicorp/{expected}"
    assert parse_version("Packer v1.6.6\n") == (1, 6, 6)
    assert parse_version("Packer v1.11.2\n\nYour version of Packer is out of date!") == (1, 11, 2)


UNCLOSED_SEQUENCE = re.compile(r"[$%]\{[^}]*$")
ADVERSARIAL = ['q"uote', "back\\slash", "${var.secret}", "%{ if true }x%{ endif }", "line\nbreak", "$${x}",
               "tab\tand\rreturn", "\\${x}", "%%{y}", "unicode ✓ \u0001"]


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ADVERSARIAL),
                     st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subnet=_strings(), project=_strings(), network=_strings(), group=_strings(), extra=_strings())
def test_adversarial_values_round_trip(tmp_path: Path, subnet: str, project: str, network: str, group: str,
                                       extra: str) -> None:
    # python-hcl2 (the parser here) wants a "}" after an escaped "$${" or "%%{"; HCL does not, and
    # Packer reads such values (test_unclosed_template_sequences_pass_packer_fmt).
    assume(not any(UNCLOSED_SEQUENCE.search(value) for value in (subnet, project, network, group, extra)))
    path = all_cells_matrix(tmp_path, aws={"subnet_id": subnet}, gcp={"project_id": project, "network": network},
                            openstack={"networks": [network, extra]}, azure={"resource_group": group})
    cells = {cell.cloud: cell for cell in plan(load_matrix(path)) if cell.os == "debian-12"}
    expected = {"aws": {"aws_subnet_id": subnet}, "gcp": {"gcp_project_id": project, "gcp_network": network},
                "openstack": {"openstack_networks": [network, extra]}, "azure": {"azure_resource_group": group}}
    for cloud, values in expected.items():
        files = render_files(cells[cloud], tmp_path / cloud, OLD_PACKER)
        parsed = load_hcl(files["cell.auto.pkrvars.hcl"])
        for name, want in values.items():
            got = parsed[name]
            got = [hcl.unstring(item) for item in got] if isinstance(got, list) else hcl.unstring(got)
            assert got == want, (cloud, name)


def test_hcl_string_escapes_template_sequences() -> None:
    assert hcl.string('a"b') == '"a\\"b"'
    assert hcl.string("${x}") == '"$${x}"'
    assert hcl.string("%{x}") == '"%%{x}"'
    assert hcl.string("a\nb") == '"a\\nb"'


def test_credentials_are_never_rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"AWS_SECRET_ACCESS_KEY": "aws-secret-0xdeadbeef", "ARM_CLIENT_SECRET": "azure-secret-0xfeed",
               "OS_PASSWORD": "openstack-secret-0xcafe", "GOOGLE_OAUTH_ACCESS_TOKEN": "gcp-token-0xbead"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    cells = plan(load_matrix(all_cells_matrix(tmp_path)))
    render_cells(cells, tmp_path / "out", OLD_PACKER)
    rendered_text = "".join(p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert not any(value in rendered_text for value in secrets.values())
    assert 'env("ARM_CLIENT_SECRET")' in rendered_text  # the reference, resolved by Packer at build time


needs_packer = pytest.mark.skipif(shutil.which("packer") is None, reason="packer is installed by .ci/run")


@needs_packer
def test_unclosed_template_sequences_pass_packer_fmt(tmp_path: Path) -> None:
    cells = plan(load_matrix(all_cells_matrix(tmp_path, aws={"subnet_id": 'a${b'}, gcp={"project_id": "p%{",
                                                                                         "network": "n"})))
    render_cells([c for c in cells if c.os == "debian-12" and c.cloud in ("aws", "gcp")], tmp_path / "out", OLD_PACKER)
    for path in (tmp_path / "out").rglob("cell.auto.pkrvars.hcl"):
        text = path.read_text()
        assert '"a$${b"' in text or '"p%%{"' in text, text
        result = subprocess.run(["packer", "fmt", "-check", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_packer
def test_rendered_files_are_packer_fmt_clean(tmp_path: Path) -> None:
    cells = plan(load_matrix(all_cells_matrix(tmp_path, aws={"subnet_id": 'odd "value" ${x}'})))
    for rendered in render_cells(cells, tmp_path / "out", OLD_PACKER):
        result = subprocess.run(["packer", "fmt", "-check", "-diff", "."], cwd=rendered.directory,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_packer
def test_shipped_matrix_passes_packer_validate(tmp_path: Path) -> None:
    """CI validates every cell of the shipped matrix with the real Packer binary."""
    with keystone() as identity:
        env = {**os.environ, **openstack_env(identity)}
        result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "validate", "-m", str(PROJECT_ROOT / "matrix.yaml"),
                                 "-o", str(tmp_path / "build"), "--offline"], capture_output=True, text=True, env=env,
                                timeout=900)
        assert identity.token_requests > 0
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    baked = [cell for cell in plan(load_matrix(PROJECT_ROOT / "matrix.yaml")) if cell.strategy == "bake"]
    assert f"{len(baked)} valid, 0 invalid" in result.stdout
    assert not any(cell.os == "flatcar" for cell in baked)


@needs_packer
def test_validate_reports_a_broken_cell(tmp_path: Path) -> None:
    path = all_cells_matrix(tmp_path, aws={"instance_type": ""})
    result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "validate", "-m", str(path), "--only", "aws-debian-12-*",
                             "-o", str(tmp_path / "build"), "--offline"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "FAILED  aws-debian-12-k8s-1.31" in result.stdout
    assert "instance_type" in result.stderr


def test_arch_and_variant_cells_render_and_say_what_they_are(tmp_path: Path) -> None:
    """Cells of an arch list and of variants render (fmt-clean, packer validate where Packer is), and
    their metadata records the arch and the variant; a default cell records no variant."""
    path = all_cells_matrix(tmp_path, qemu={"variants": ["efi"]}, azure={"variants": ["cvm", "trustedlaunch", "gen1"]})
    path.write_text(path.read_text() + "arch: [amd64, arm64]\nexclude:\n  - {os: debian-12, variant: cvm}\n"
                     "  - {variant: cvm, arch: arm64}\n  - {os: debian-12, variant: gen1}\n  - {variant: gen1, arch: arm64}\n")
    cells = plan(load_matrix(path))
    rendered = {r.cell.id: r for r in render_cells(cells, tmp_path / "out", OLD_PACKER)}
    for cell_id, variant, arch in (("azure-ubuntu-2204-cvm-k8s-1.31", "cvm", "amd64"),
                                   ("qemu-debian-12-arm64-efi-k8s-1.31", "efi", "arm64"),
                                   ("aws-ubuntu-2204-arm64-k8s-1.31", None, "arm64"),
                                   ("gcp-debian-12-k8s-1.31", None, "amd64")):
        values = load_hcl((rendered[cell_id].directory / "cell.auto.pkrvars.hcl").read_text())
        assert values["metadata"].get("imagebuilder-variant") == variant, cell_id
        assert values["metadata"]["imagebuilder-arch"] == arch and values["metadata"]["imagebuilder-cell"] == cell_id
        ansible_vars = json.loads((rendered[cell_id].directory / "ansible-vars.json").read_text())
        assert ansible_vars["imagebuilder_downloads"]["kubelet"]["url"].endswith(f"/linux/{arch}/kubelet")
    cvm = load_hcl((rendered["azure-ubuntu-2204-cvm-k8s-1.31"].directory / "cell.auto.pkrvars.hcl").read_text())
    assert (cvm["azure_image_sku"], cvm["azure_vm_size"]) == ("22_04-lts-cvm", "Standard_DC2as_v5")
    arm = load_hcl((rendered["aws-ubuntu-2204-arm64-k8s-1.31"].directory / "cell.auto.pkrvars.hcl").read_text())
    assert (arm["aws_instance_type"], arm["aws_source_ami_name"]) == (
        "t4g.large", "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-arm64-server-*")
    gen1 = load_hcl((rendered["azure-ubuntu-2204-gen1-k8s-1.31"].directory / "cell.auto.pkrvars.hcl").read_text())
    assert (gen1["azure_image_sku"], gen1["azure_image_definition"]) == ("22_04-lts", "capi-ubuntu-2204-gen1-k8s-1.31")
    if shutil.which("packer") is None:
        return
    for directory in (rendered[c].directory for c in ("azure-ubuntu-2204-cvm-k8s-1.31", "azure-ubuntu-2204-gen1-k8s-1.31",
                                                      "aws-ubuntu-2204-arm64-k8s-1.31")):
        result = subprocess.run(["packer", "fmt", "-check", "."], cwd=directory, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        result = subprocess.run(["packer", "validate", "."], cwd=directory, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
