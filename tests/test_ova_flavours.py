"""The ova cloud's base and vmx flavours (image-builder's node-ova-local-base-<os> and
node-ova-local-vmx-<os>): the plan names the base a vmx cell is built on in its base image and key,
the base renders without the roles, and each flavour's OVA is made from a small disk and checked as
vSphere reads it; the vmx build takes its base disk out of the base OVA in the catalogue (Flatcar's
bake writes the sysext onto it). No VM."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from mirror import DEFAULT_FIXTURE_VERSIONS
from test_flatcar import MINOR as FLATCAR_MINOR
from test_flatcar import matrix_file as flatcar_matrix
from test_flatcar import served  # noqa: F401 - the fixture: a Flatcar release server and the fixture pins
from test_ova_output import check_ova, ova_properties
from test_raw_output import MINOR, built, cells_of, disk_content

from imagebuilder import baseimages, flatcar, sysext
from imagebuilder.artifact import from_packer_manifest
from imagebuilder.build import Job
from imagebuilder.clouds import registry
from imagebuilder.config import PROJECT_ROOT, load_matrix
from imagebuilder.errors import UserError
from imagebuilder.offline import BUILT_ON_DISK
from imagebuilder.pipeline import TargetHooks
from imagebuilder.planner import Cell, plan
from imagebuilder.render import render_cells
from imagebuilder.targets import target_of

FLAVOURS = ["base", "vmx", "base-efi", "vmx-efi"]
FIXTURE_KUBERNETES = DEFAULT_FIXTURE_VERSIONS["kubernetes"]


def write_matrix(path: Path, overrides: list | None = None) -> Path:
    path.write_text(yaml.safe_dump({
        "versions_file": str(PROJECT_ROOT / "versions.lock.yaml"), "os": ["ubuntu-2404", "debian-12"],
        "kubernetes": [MINOR], "clouds": {"ova": {"boot_test": False, "variants": FLAVOURS}},
        "overrides": overrides or [],
    }))
    return path


def cell(cells: dict[str, Cell], os_id: str, variant: str | None = None) -> Cell:
    return cells[f"ova-{os_id}{'-' + variant if variant else ''}-k8s-{MINOR}"]


@pytest.fixture
def cells(tmp_path: Path) -> dict[str, Cell]:
    return cells_of(write_matrix(tmp_path / "matrix.yaml"))


def test_each_flavour_is_image_builders_target(cells: dict[str, Cell]) -> None:
    names = {target_of(c) for c in cells.values() if c.os == "ubuntu-2404"}
    assert names == {"build-node-ova-local-ubuntu-2404", "build-node-ova-local-base-ubuntu-2404",
                     "build-node-ova-local-vmx-ubuntu-2404", "build-node-ova-local-base-ubuntu-2404-efi",
                     "build-node-ova-local-vmx-ubuntu-2404-efi"}
    upstream = (PROJECT_ROOT / "tests" / "data" / "image_builder_targets.txt").read_text().split()
    assert names <= set(upstream)
    ova = registry.get("ova")
    assert ova.image_name_prefix(cell(cells, "ubuntu-2404", "base")) == "ubuntu-2404-base-"  # no Kubernetes in it
    assert ova.image_name_prefix(cell(cells, "ubuntu-2404", "vmx")).startswith("ubuntu-2404-vmx-kube-v")


def test_a_vmx_cell_is_built_on_its_base_cell_and_its_key_says_so(tmp_path: Path, cells: dict[str, Cell]) -> None:
    for os_id in ("ubuntu-2404", "debian-12"):
        for vmx, base in (("vmx", "base"), ("vmx-efi", "base-efi")):
            on, under = cell(cells, os_id, vmx), cell(cells, os_id, base)
            assert on.base_image == {"source": "variant", "variant": base, "cell": under.id,
                                     "build_key": under.build_key}
            assert on.base_source == {}
        assert cell(cells, os_id, "base").base_image == cell(cells, os_id).base_image  # the vendor's (or local) base
    # A change to the base flavour alone (a bigger disk) moves the base's key and so the vmx's, not the node's.
    moved = cells_of(write_matrix(tmp_path / "moved.yaml", [
        {"match": {"cloud": "ova", "variant": "base"}, "settings": {"disk_size_mb": 10240}}]))
    for name, moves in ((None, False), ("base", True), ("vmx", True), ("base-efi", False), ("vmx-efi", False)):
        assert (cell(moved, "ubuntu-2404", name).build_key != cell(cells, "ubuntu-2404", name).build_key) is moves, name


def test_resolving_the_base_image_rekeys_the_vmx_cell_on_the_resolved_base(
        tmp_path: Path, cells: dict[str, Cell], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def resolve_base(self, resolver, c: Cell) -> dict:
        seen.append(c.id)
        return {"sha256": "ab" * 32, "file": "noble-server-cloudimg-amd64.img"}

    monkeypatch.setattr(type(registry.get("ova")), "resolve_base", resolve_base)
    loaded = load_matrix(tmp_path / "matrix.yaml")
    chosen = [cell(cells, "ubuntu-2404", "vmx")]
    (vmx,) = baseimages.resolve_cells(chosen, loaded, baseimages.Resolver())
    (base,) = baseimages.resolve_cells([cell(cells, "ubuntu-2404", "base")], loaded, baseimages.Resolver())
    assert seen == [cell(cells, "ubuntu-2404", "base").id] * 2  # the vmx cell's own reference is never resolved
    assert base.build_key != cell(cells, "ubuntu-2404", "base").build_key
    assert vmx.base_image["build_key"] == base.build_key and vmx.base_image["resolved"] == {"build_key": base.build_key}
    assert vmx.build_key != chosen[0].build_key


def test_the_base_renders_without_the_roles_and_the_vmx_boots_its_base_disk(
        tmp_path: Path, cells: dict[str, Cell]) -> None:
    chosen = [cell(cells, "debian-12"), cell(cells, "debian-12", "base"), cell(cells, "debian-12", "vmx")]
    render_cells(chosen, tmp_path / "out", None)
    node, base, vmx = ((tmp_path / "out" / c.id / "ova.pkr.hcl").read_text() for c in chosen)
    assert 'provisioner "ansible"' in node and 'provisioner "ansible"' not in base
    # Debian's local base has no bootloader: the node and base builds boot its kernel and install GRUB;
    # the vmx build boots the base OVA's disk, which has it.
    assert '"-kernel"' in node and '"-kernel"' in base and "grub-install" in base
    assert '"-kernel"' not in vmx and "grub-install" not in vmx and 'provisioner "ansible"' in vmx
    assert 'iso_checksum     = var.qemu_base_checksum' in vmx


def test_a_vmx_efi_cell_on_a_uefi_only_disk_is_refused_before_packer(cells: dict[str, Cell]) -> None:
    ova = registry.get("ova")
    reason = ova.variant_unbuilt(cell(cells, "debian-12", "vmx-efi"))
    assert reason is not None and "boots BIOS" in reason and "| fix: exclude {cloud: ova, os: debian-12, variant: vmx-efi}" in reason
    assert ova.variant_unbuilt(cell(cells, "debian-12", "base-efi")) is None  # the offline build makes it
    assert ova.variant_unbuilt(cell(cells, "debian-12", "vmx")) is None
    # Ubuntu's cloud image boots BIOS and UEFI alike: its base-efi disk boots in the Packer template too.
    assert ova.variant_unbuilt(cell(cells, "ubuntu-2404", "vmx-efi")) is None


def published(c: Cell, root: Path, timestamp: str, content: bytes) -> Path:
    job, artifact = built(c, root, timestamp, content)
    record = TargetHooks(publish=True).finish(job, artifact)
    ova = Path(next(name for name in record.files if name.endswith(".ova")))
    return ova


def test_each_flavour_makes_an_ova_and_the_vmx_is_built_on_the_base_ova(
        tmp_path: Path, cells: dict[str, Cell], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    base_cell, vmx_cell = cell(cells, "ubuntu-2404", "base"), cell(cells, "ubuntu-2404", "vmx")
    base_content, node_content = disk_content(5), disk_content(6)

    base_ova = published(base_cell, tmp_path / "build", "20260101000000", base_content)
    check_ova(base_ova, base_ova.with_name(base_ova.name + ".sha256sum"))
    properties = ova_properties(base_ova)
    assert properties["IMAGEBUILDER_BUILD_KEY"] == base_cell.build_key and properties["DISTRO_NAME"] == "ubuntu"
    assert not {"KUBERNETES_SEMVER", "CONTAINERD_VERSION", "IMAGEBUILDER_BASE_BUILD_KEY"} & set(properties)
    with __import__("tarfile").open(base_ova) as archive:
        descriptor = archive.extractfile(archive.getmembers()[0]).read().decode()  # type: ignore[union-attr]
    assert "the OS alone (no Kubernetes)" in descriptor and "A Kubernetes node image" not in descriptor

    # The vmx build's base disk: the base OVA's, out of the catalogue, as a qcow2 Packer boots.
    job = Job(cell=vmx_cell, directory=tmp_path / "vmx-build", estimate=1.0)
    registry.get("ova").prepare(job)
    assert job.builder == "packer"
    disk = job.directory / "base" / "disk.img"
    assert disk.is_symlink() and disk.resolve() == (job.directory / "base" / BUILT_ON_DISK).resolve()
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(back)], check=True)
    assert back.read_bytes() == base_content
    assert (job.directory / "base" / "seed" / "user-data").is_file() and (job.directory / "base" / "id_ed25519").is_file()

    vmx_ova = published(vmx_cell, tmp_path / "build", "20260101000100", node_content)
    check_ova(vmx_ova, vmx_ova.with_name(vmx_ova.name + ".sha256sum"))
    properties = ova_properties(vmx_ova)
    assert properties["IMAGEBUILDER_BUILD_KEY"] == vmx_cell.build_key
    assert properties["IMAGEBUILDER_BASE_BUILD_KEY"] == base_cell.build_key  # the OVA names what it was built on
    assert properties["KUBERNETES_SEMVER"] == f"v{vmx_cell.kubernetes_version}"


def test_a_vmx_build_without_its_base_ova_stops_in_one_line(tmp_path: Path, cells: dict[str, Cell],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    vmx_cell, base_cell = cell(cells, "ubuntu-2404", "vmx"), cell(cells, "ubuntu-2404", "base")
    job = Job(cell=vmx_cell, directory=tmp_path / "vmx-build", estimate=1.0)
    with pytest.raises(UserError, match=f"not in the catalogue \\| fix: build it first: imagebuilder build --only "
                                        f"{base_cell.id}") as error:
        registry.get("ova").prepare(job)
    assert "\n" not in str(error.value)
    # A base OVA that no longer matches its .sha256sum is refused, not built on.
    base_ova = published(base_cell, tmp_path / "build", "20260101000000", disk_content(7))
    catalogued = next((tmp_path / "catalogue" / "images").glob(f"*/{base_ova.name}"))
    with catalogued.open("r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x01")
    with pytest.raises(UserError, match=f"does not match {base_ova.name}.sha256sum"):
        registry.get("ova").prepare(job)



def test_flatcars_base_is_the_vendor_disk_and_its_vmx_is_baked_onto_the_base_ova(
        served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flatcar's OVA is baked (imagebuilder/flatcar.py): the base is the vendor's disk without the sysext,
    the vmx the sysext written onto the base OVA's disk, the vendor's never fetched again."""
    base_url, files, _ = served
    monkeypatch.setenv("IMAGEBUILDER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    matrix = flatcar_matrix(tmp_path, base_url, files, {"ova": {"boot_test": False, "variants": ["base", "vmx"]}})
    cells = {c.id: c for c in plan(load_matrix(matrix))}
    ova = registry.get("ova")
    base_cell, vmx_cell = cells[f"ova-flatcar-base-k8s-{FLATCAR_MINOR}"], cells[f"ova-flatcar-vmx-k8s-{FLATCAR_MINOR}"]
    assert ova.variant_unbuilt(base_cell) is None and ova.variant_unbuilt(vmx_cell) is None

    def bake(c: Cell) -> tuple[Job, Path]:
        job = Job(cell=c, directory=tmp_path / c.id, estimate=1.0)
        job.directory.mkdir()
        ova.prepare(job)
        assert job.builder == flatcar.BUILDER
        with job.log_path.open("ab") as log:
            return job, flatcar.bake_local(job, threading.Event(), log)

    def entries(qcow2: Path) -> tuple | None:
        raw = qcow2.with_suffix(".check.raw")
        subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(qcow2), str(raw)], check=True)
        try:
            return flatcar.read_entry(raw, flatcar.root_partition(raw), sysext.NODE_SYMLINK)
        finally:
            raw.unlink()

    job, qcow2 = bake(base_cell)
    assert qcow2.name.startswith("flatcar-base-") and entries(qcow2) is None  # the OS alone
    assert not (job.directory / "sysext").exists()
    record = TargetHooks(publish=True).finish(job, from_packer_manifest(job.directory / "packer-manifest.json", "ova"))
    base_ova = Path(next(name for name in record.files if name.endswith(".ova")))
    assert "KUBERNETES_SEMVER" not in ova_properties(base_ova)

    monkeypatch.setattr(flatcar, "base_disk", lambda *args: pytest.fail("the vmx bake fetched the vendor's disk"))
    job, qcow2 = bake(vmx_cell)
    assert (job.directory / "base" / BUILT_ON_DISK).is_file()
    assert entries(qcow2) == ("link", f"{sysext.NODE_IMAGE_DIR}/{sysext.image_name(FIXTURE_KUBERNETES, 'amd64')}")
    record = TargetHooks(publish=True).finish(job, from_packer_manifest(job.directory / "packer-manifest.json", "ova"))
    vmx_ova = Path(next(name for name in record.files if name.endswith(".ova")))
    check_ova(vmx_ova, vmx_ova.with_name(vmx_ova.name + ".sha256sum"))
    assert ova_properties(vmx_ova)["IMAGEBUILDER_BASE_BUILD_KEY"] == base_cell.build_key
