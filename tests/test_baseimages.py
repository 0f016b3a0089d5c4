"""Base images resolved at plan time (imagebuilder/baseimages.py), against local services:
moto (AWS over HTTP), the GCP and Azure stand-ins, a real Glance, and local HTTP sites laid out
as Debian, Ubuntu and Rocky publish their bases. A newer base moves its cells' build keys and
no other; render pins the build to that image; --offline asks nothing; an unresolvable base is
one line naming the cell and the reference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from hcl2.utils import SerializationOptions
from base_mirror import (
    ROCKY_LATEST,
    base_mirrors,
    owners_session,
    publish_debian,
    publish_rocky,
    publish_ubuntu,
    register_vendor_ami,
)
from mirror import serve_directory
from services import VENDOR_AMI_DATE, aws_env, glance_url, moto_url, openstack_env  # noqa: F401 (fixtures)

from imagebuilder import baseimages
from imagebuilder.clouds.qemu import bases
from imagebuilder.cloudscope import CloudScope
from imagebuilder.clouds import store_for
from imagebuilder.config import PROJECT_ROOT, LoadedMatrix, load_matrix
from imagebuilder.osinfo import OPERATING_SYSTEMS
from imagebuilder.planner import Cell, plan
from imagebuilder.render import render_cells

REPO = Path(__file__).resolve().parents[1]
MINORS = ["1.34", "1.35"]
UBUNTU = OPERATING_SYSTEMS["ubuntu-2204"]
DEBIAN = OPERATING_SYSTEMS["debian-12"]
ROCKY = OPERATING_SYSTEMS["rockylinux-9"]
UBUNTU_GCP, DEBIAN_GCP = ((info.images["gcp"]["amd64"]["project"], info.images["gcp"]["amd64"]["family"])
                          for info in (UBUNTU, DEBIAN))


def write_matrix(root: Path, os_ids: list[str], clouds: dict[str, Any], **extra: Any) -> Path:
    (root / "versions.lock.yaml").write_text((REPO / "versions.lock.yaml").read_text())
    path = root / "matrix.yaml"
    path.write_text(yaml.safe_dump({"os": os_ids, "kubernetes": MINORS, "clouds": clouds, **extra}))
    return path


def keys(cells: list[Cell]) -> dict[str, str]:
    return {cell.id: cell.build_key for cell in cells}


def pkrvars(directory: Path) -> dict[str, Any]:
    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    return hcl2.loads((directory / "cell.auto.pkrvars.hcl").read_text(), serialization_options=options)


def packer_fmt_ok(directory: Path) -> None:
    if shutil.which("packer"):
        result = subprocess.run(["packer", "fmt", "-check", "-diff", str(directory)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


# -- AWS on moto ---------------------------------------------------------------------------------

def aws_resolver() -> baseimages.Resolver:
    return baseimages.Resolver(store_for=lambda cell: store_for("aws", cell.settings, session=owners_session()))


def ubuntu_ami(moto: str, date: str) -> str:
    return register_vendor_ami(moto, UBUNTU.images["aws"]["amd64"]["owner"],
                               UBUNTU.images["aws"]["amd64"]["name_filter"].replace("*", date))


def test_a_newer_ami_moves_that_cells_key_and_no_other(aws_env: str, tmp_path: Path) -> None:
    ubuntu_ami(aws_env, "20250101")
    register_vendor_ami(aws_env, DEBIAN.images["aws"]["amd64"]["owner"], "debian-12-amd64-20250101-1000")
    loaded = load_matrix(write_matrix(tmp_path, ["ubuntu-2204", "debian-12"],
                                      {"aws": {"regions": ["us-east-1", "eu-west-1"]}}))
    unresolved = plan(loaded)
    resolver = aws_resolver()
    before = baseimages.resolve_cells(unresolved, loaded, resolver)
    # four cells, two references in one build region: two DescribeImages calls
    assert len(before) == 4 and resolver.calls == 2
    assert all(cell.build_key != plain.build_key for cell, plain in zip(before, unresolved))

    time.sleep(1.1)  # CreationDate has whole seconds
    newer = ubuntu_ami(aws_env, "20250301")
    after = baseimages.resolve_cells(unresolved, loaded, aws_resolver())

    moved = {cell_id for cell_id, key in keys(after).items() if keys(before)[cell_id] != key}
    assert moved == {"aws-ubuntu-2204-k8s-1.34", "aws-ubuntu-2204-k8s-1.35"}
    rendered = {r.cell.id: r for r in render_cells(after, tmp_path / "build", (1, 6, 6))}
    values = pkrvars(rendered["aws-ubuntu-2204-k8s-1.35"].directory)
    assert values["aws_source_ami"] == newer
    template = (rendered["aws-ubuntu-2204-k8s-1.35"].directory / "aws.pkr.hcl").read_text()
    assert "source_ami    = var.aws_source_ami" in template and "source_ami_filter" not in template
    packer_fmt_ok(rendered["aws-ubuntu-2204-k8s-1.35"].directory)
    # planned --offline, the template still selects by filter
    (offline,) = render_cells(unresolved[:1], tmp_path / "offline", (1, 6, 6))
    assert "source_ami_filter" in (offline.directory / "aws.pkr.hcl").read_text()
    packer_fmt_ok(offline.directory)


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})})


def test_an_unresolvable_base_is_one_line_naming_the_cell_and_the_reference(openstack_env: str,
                                                                           tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, ["ubuntu-2204"], {"openstack": {}})
    # Glance answers, but holds no image of that name
    result = cli("plan", "-m", str(matrix), "--format", "json", cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "discovery" not in line]  # openstacksdk's own note
    assert line.startswith("imagebuilder: openstack-ubuntu-2204-k8s-1.34: base image image_name=ubuntu-22.04: ")
    assert "fix:" in line and "Traceback" not in result.stderr and result.stdout == ""


def test_the_cli_plan_resolves_the_vendors_amis(aws_env: str, tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, ["ubuntu-2204", "rockylinux-9"], {"aws": {"regions": ["us-east-1"]}})
    result = cli("plan", "-m", str(matrix), "--format", "json", cwd=tmp_path)

    assert result.returncode == 0 and result.stderr == "", result.stderr
    loaded = load_matrix(matrix)
    expected = baseimages.resolve_cells(plan(loaded), loaded, baseimages.Resolver())
    assert keys(expected) == {cell["id"]: cell["build_key"] for cell in json.loads(result.stdout)}
    assert {cell.base_image["resolved"]["name"] for cell in expected} == {
        UBUNTU.images["aws"]["amd64"]["name_filter"].replace("*", VENDOR_AMI_DATE),
        ROCKY.images["aws"]["amd64"]["name_filter"].replace("*", VENDOR_AMI_DATE)}


def test_offline_plans_from_references_without_calls(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, ["ubuntu-2204", "debian-12"], {"qemu": {}, "aws": {"regions": ["us-east-1"]}},
                          mirrors={"debian": "http://127.0.0.1:9/debian"})
    # nothing listens on port 9 and there are no credentials: any call would fail the plan
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    result = cli("plan", "-m", str(matrix), "--offline", "--format", "json", cwd=tmp_path, env=env)

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [baseimages.OFFLINE_NOTE]
    planned = json.loads(result.stdout)
    assert keys(plan(load_matrix(matrix))) == {cell["id"]: cell["build_key"] for cell in planned}

    resolving = cli("plan", "-m", str(matrix), "--format", "json", cwd=tmp_path, env=env)
    assert resolving.returncode == 3, resolving.stderr  # both clouds skipped with a warning each
    assert len([line for line in resolving.stderr.splitlines() if "warning" in line]) == 2
    assert json.loads(resolving.stdout) == []


# -- qemu: vendor checksums and the Debian mirror ------------------------------------------------

@pytest.fixture
def base_site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "site"
    publish_debian(root, "Sat, 01 Mar 2025 10:00:00 UTC")
    publish_ubuntu(root)
    publish_rocky(root)
    with serve_directory(root) as url:
        yield root, url


def test_a_new_debian_inrelease_moves_the_qemu_debian_key(base_site: tuple[Path, str], tmp_path: Path) -> None:
    root, url = base_site
    loaded = load_matrix(write_matrix(tmp_path, ["ubuntu-2204", "debian-12", "rockylinux-9"], {"qemu": {}},
                                      mirrors=base_mirrors(url)))
    unresolved = plan(loaded)
    resolver = baseimages.Resolver()
    before = baseimages.resolve_cells(unresolved, loaded, resolver)
    # three InRelease files, one SHA256SUMS, one CHECKSUM, whatever the number of minors
    assert len(before) == 6 and resolver.calls == 5

    publish_debian(root, "Sat, 01 Mar 2025 10:00:00 UTC", security_stamp="Sun, 02 Mar 2025 08:00:00 UTC")
    after = baseimages.resolve_cells(unresolved, loaded, baseimages.Resolver())
    moved = {cell_id for cell_id, key in keys(after).items() if keys(before)[cell_id] != key}
    assert moved == {"qemu-debian-12-k8s-1.34", "qemu-debian-12-k8s-1.35"}
    # the mirror is not in the key: the same releases from another URL give the same keys
    with serve_directory(root) as other_url:
        elsewhere = load_matrix(write_matrix(tmp_path, ["ubuntu-2204", "debian-12", "rockylinux-9"], {"qemu": {}},
                                             mirrors=base_mirrors(other_url)))
        assert keys(baseimages.resolve_cells(plan(elsewhere), elsewhere, baseimages.Resolver())) == keys(after)


def test_vendor_images_are_pinned_by_their_published_sha256(base_site: tuple[Path, str], tmp_path: Path) -> None:
    root, url = base_site
    loaded = load_matrix(write_matrix(tmp_path, ["ubuntu-2204", "rockylinux-9"], {"qemu": {}},
                                      mirrors=base_mirrors(url)))
    cells = {cell.id: cell for cell in baseimages.resolve_cells(plan(loaded), loaded, baseimages.Resolver())}
    rocky = cells["qemu-rockylinux-9-k8s-1.35"]
    dated, digest = publish_rocky(root)  # the same bytes: the same answer
    # Rocky's URL is spelled as Rocky spells it, and `latest` is pinned to the dated file it names
    assert "/images/x86_64/" in rocky.base_image["source"] and rocky.base_image["source"].endswith(ROCKY_LATEST)
    assert rocky.base_image["resolved"] == {"sha256": digest, "file": dated}
    rendered = {r.cell.id: r for r in render_cells(list(cells.values()), tmp_path / "build", (1, 6, 6))}
    assert pkrvars(rendered[rocky.id].directory)["qemu_base_checksum"] == f"sha256:{digest}"
    packer_fmt_ok(rendered[rocky.id].directory)

    ubuntu_before = cells["qemu-ubuntu-2204-k8s-1.35"].build_key
    publish_ubuntu(root, b"a patched ubuntu cloud image")
    again = {cell.id: cell for cell in baseimages.resolve_cells(plan(loaded), loaded, baseimages.Resolver())}
    assert again["qemu-ubuntu-2204-k8s-1.35"].build_key != ubuntu_before
    assert again[rocky.id].build_key == rocky.build_key


def test_a_missing_checksum_entry_is_the_cells_error(base_site: tuple[Path, str], tmp_path: Path) -> None:
    root, url = base_site
    (root / "rocky" / "9" / "images" / "x86_64" / "CHECKSUM").write_text("SHA256 (other.qcow2) = " + "0" * 64 + "\n")
    loaded = load_matrix(write_matrix(tmp_path, ["rockylinux-9"], {"qemu": {}}, mirrors=base_mirrors(url)))
    with pytest.raises(baseimages.Unresolvable) as raised:
        baseimages.resolve_cells(plan(loaded), loaded, baseimages.Resolver())
    assert str(raised.value).startswith("qemu-rockylinux-9-k8s-1.34: base image source=https://dl.rockylinux.org/")
    assert "CHECKSUM has no sha256 for Rocky-9-GenericCloud-Base.latest.x86_64.qcow2" in str(raised.value)


def test_an_unreachable_site_skips_qemu_and_the_other_clouds_go_on(aws_env: str, tmp_path: Path) -> None:
    ubuntu_ami(aws_env, "20250101")
    loaded = load_matrix(write_matrix(tmp_path, ["ubuntu-2204"], {"qemu": {}, "aws": {"regions": ["us-east-1"]}},
                                      mirrors={"ubuntu_cloud_images": "http://127.0.0.1:9/ubuntu"}))
    warnings: list[str] = []
    resolver = aws_resolver()
    resolver.scope = CloudScope(warn=warnings.append)
    cells = baseimages.resolve_cells(plan(loaded), loaded, resolver)

    assert list(resolver.scope.skipped) == ["qemu"] and len(warnings) == 1 and "127.0.0.1:9" in warnings[0]
    assert [cell.id for cell in cells if "resolved" in cell.base_image] == ["aws-ubuntu-2204-k8s-1.34",
                                                                           "aws-ubuntu-2204-k8s-1.35"]


# -- OpenStack: a real Glance ---------------------------------------------------------------------

def glance_upload(name: str, tmp_path: Path) -> str:
    import openstack

    disk = tmp_path / "base.raw"
    disk.write_bytes(b"base" * 1024)
    image = openstack.connect().image.create_image(name=name, filename=str(disk), disk_format="raw",
                                                   container_format="bare", allow_duplicates=True, wait=True)
    return str(image.id)


def test_glance_resolves_the_newest_image_of_that_name(openstack_env: str, tmp_path: Path) -> None:
    glance_upload(UBUNTU.images["openstack"]["amd64"]["image_name"], tmp_path)
    glance_upload(DEBIAN.images["openstack"]["amd64"]["image_name"], tmp_path)
    loaded = load_matrix(write_matrix(tmp_path, ["ubuntu-2204", "debian-12"], {"openstack": {}}))
    resolver = baseimages.Resolver()
    before = baseimages.resolve_cells(plan(loaded), loaded, resolver)
    assert resolver.calls == 2

    time.sleep(1.1)  # Glance's created_at has whole seconds
    newer = glance_upload(UBUNTU.images["openstack"]["amd64"]["image_name"], tmp_path)
    after = baseimages.resolve_cells(plan(loaded), loaded, baseimages.Resolver())
    moved = {cell_id for cell_id, key in keys(after).items() if keys(before)[cell_id] != key}
    assert moved == {"openstack-ubuntu-2204-k8s-1.34", "openstack-ubuntu-2204-k8s-1.35"}
    (rendered,) = render_cells([after[-1]], tmp_path / "build", (1, 6, 6))
    assert pkrvars(rendered.directory)["openstack_source_image_id"] == newer
    assert "source_image        = var.openstack_source_image_id" in (rendered.directory / "openstack.pkr.hcl").read_text()
    packer_fmt_ok(rendered.directory)


# -- GCP and Azure stand-ins ---------------------------------------------------------------------

@pytest.fixture
def gcp() -> Iterator[Any]:
    pytest.importorskip("google.cloud.compute_v1")
    from standins.gcp_compute import GcpComputeStandin

    server = GcpComputeStandin()
    server.start()
    yield server
    server.stop()


def gcp_base(server: Any, project: str, family: str, name: str, created: str) -> None:
    server.images[(project, name)] = {
        "kind": "compute#image", "id": str(abs(hash(name)) % 10**15), "name": name, "family": family,
        "status": "READY", "creationTimestamp": created, "selfLink": server.link(project, "images", name)}


def test_gcp_family_resolves_to_its_current_image(gcp: Any, tmp_path: Path) -> None:
    from google.auth.credentials import AnonymousCredentials

    from imagebuilder.clouds.gcp.store import GcpImageStore
    from imagebuilder.clouds.gcp.settings import GcpSettings

    gcp_base(gcp, *UBUNTU_GCP, "ubuntu-2204-jammy-v20250101", "2025-01-01T00:00:00Z")
    gcp_base(gcp, *DEBIAN_GCP, "debian-12-bookworm-v20250101", "2025-01-01T00:00:00Z")
    loaded = load_matrix(write_matrix(tmp_path, ["ubuntu-2204", "debian-12"], {"gcp": {"project_id": "capi"}}))
    resolver = baseimages.Resolver(store_for=lambda cell: GcpImageStore(
        GcpSettings(project_id="capi"), credentials=AnonymousCredentials(), api_endpoint=gcp.base_url, backoff=0.0))
    before = baseimages.resolve_cells(plan(loaded), loaded, resolver)
    assert resolver.calls == 2

    gcp_base(gcp, *UBUNTU_GCP, "ubuntu-2204-jammy-v20250301", "2025-03-01T00:00:00Z")
    resolver.memo.clear()  # a later plan run
    after = baseimages.resolve_cells(plan(loaded), loaded, resolver)
    moved = {cell_id for cell_id, key in keys(after).items() if keys(before)[cell_id] != key}
    assert moved == {"gcp-ubuntu-2204-k8s-1.34", "gcp-ubuntu-2204-k8s-1.35"}
    (rendered,) = render_cells([after[-1]], tmp_path / "build", (1, 6, 6))
    assert pkrvars(rendered.directory)["gcp_source_image"] == "ubuntu-2204-jammy-v20250301"
    template = (rendered.directory / "gcp.pkr.hcl").read_text()
    assert "source_image            = var.gcp_source_image" in template and "source_image_family" not in template
    packer_fmt_ok(rendered.directory)


@pytest.fixture
def arm() -> Iterator[Any]:
    pytest.importorskip("azure.mgmt.compute")
    from standins.azure_compute import AzureComputeStandin

    server = AzureComputeStandin()
    server.start()
    yield server
    server.stop()


def test_azure_latest_resolves_to_the_highest_marketplace_version(arm: Any, tmp_path: Path) -> None:
    from test_publish_azure import SUB, FakeCredential

    from imagebuilder.clouds.azure.store import AzureImageStore
    from imagebuilder.clouds.azure.settings import AzureSettings

    ubuntu, debian = (OPERATING_SYSTEMS[o].images["azure"]["amd64"] for o in ("ubuntu-2204", "debian-12"))
    arm.marketplace[("westeurope", *ubuntu.values())] = ["22.04.202501010", "22.04.202412100"]
    arm.marketplace[("westeurope", *debian.values())] = ["0.20250101.1970"]
    loaded = load_matrix(write_matrix(tmp_path, ["ubuntu-2204", "debian-12"],
                                      {"azure": {"resource_group": "rg", "location": "westeurope"}}))
    resolver = baseimages.Resolver(store_for=lambda cell: AzureImageStore(
        AzureSettings(resource_group="rg"), subscription_id=SUB, credential=FakeCredential(), base_url=arm.base_url,
        polling_interval=0, retry_total=0))
    before = baseimages.resolve_cells(plan(loaded), loaded, resolver)
    assert resolver.calls == 2
    assert before[-1].base_image["resolved"] == {"version": "22.04.202501010"}

    arm.marketplace[("westeurope", *ubuntu.values())].append("22.04.202503010")
    resolver.memo.clear()
    after = baseimages.resolve_cells(plan(loaded), loaded, resolver)
    moved = {cell_id for cell_id, key in keys(after).items() if keys(before)[cell_id] != key}
    assert moved == {"azure-ubuntu-2204-k8s-1.34", "azure-ubuntu-2204-k8s-1.35"}
    (rendered,) = render_cells([after[-1]], tmp_path / "build", (1, 6, 6))
    assert pkrvars(rendered.directory)["azure_image_version"] == "22.04.202503010"
    assert "image_version                     = var.azure_image_version" in (
        rendered.directory / "azure.pkr.hcl").read_text()
    packer_fmt_ok(rendered.directory)


# -- the shipped matrix ----------------------------------------------------------------------------

def test_vendor_architecture_names_in_the_references() -> None:
    loaded: LoadedMatrix = load_matrix(REPO / "matrix.yaml")
    for cell in plan(loaded):
        reference = json.dumps(cell.base_image)
        if cell.os == "rockylinux-9":
            assert "amd64" not in reference and ("x86_64" in reference or cell.cloud in ("gcp", "openstack")), reference
        elif cell.strategy == "bake" and (cell.cloud == "aws" or cell.base_image.get("source", "local") != "local"):
            assert "x86_64" not in reference and "amd64" in reference, reference


def test_the_rocky_qemu_base_is_the_pinned_vendor_image(base_site: tuple[Path, str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from imagebuilder import local_target
    from imagebuilder.errors import UserError

    root, url = base_site
    monkeypatch.setenv("IMAGEBUILDER_CACHE", str(tmp_path / "cache"))
    loaded = load_matrix(write_matrix(tmp_path, ["rockylinux-9"], {"qemu": {}}, mirrors=base_mirrors(url)))
    cell = baseimages.resolve_cells(plan(loaded), loaded, baseimages.Resolver())[-1]
    dated = cell.base_image["resolved"]["file"]

    disk = local_target.base_files(cell)["disk.img"]
    assert disk.name == dated and disk.read_bytes() == b"rocky cloud image"
    # the vendor moves `latest` on: the cell still gets the image its key names
    publish_rocky(root, b"a newer rocky image", stamp="20250301")
    (disk.parent / dated).unlink()
    assert local_target.base_files(cell)["disk.img"].read_bytes() == b"rocky cloud image"
    # the pinned file altered at the vendor: refused, not built on
    (disk.parent / dated).unlink()
    (root / "rocky" / "9" / "images" / "x86_64" / dated).write_bytes(b"tampered")
    with pytest.raises(UserError, match="sha256 is"):
        local_target.base_files(cell)


def test_a_debian_base_is_not_built_from_a_mirror_that_moved_since_the_plan(
        base_site: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagebuilder import local_target
    from imagebuilder.errors import UserError

    root, url = base_site
    monkeypatch.setenv("IMAGEBUILDER_CACHE", str(tmp_path / "cache"))
    loaded = load_matrix(write_matrix(tmp_path, ["debian-12"], {"qemu": {}}, mirrors=base_mirrors(url)))
    (cell, _) = baseimages.resolve_cells(plan(loaded), loaded, baseimages.Resolver())
    bases.check_debian_releases(cell)  # as planned: nothing to say

    publish_debian(root, "Sat, 01 Mar 2025 10:00:00 UTC", security_stamp="Mon, 03 Mar 2025 08:00:00 UTC")
    with pytest.raises(UserError, match=r"qemu-debian-12-k8s-1.34: the Debian mirror published a new "
                                        r"bookworm-security since the plan"):
        local_target.base_files(cell)
    assert not (tmp_path / "cache" / "base").exists() or not any((tmp_path / "cache" / "base").iterdir())
