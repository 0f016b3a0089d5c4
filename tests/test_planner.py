"""The planner: cells, ids, include/exclude/overrides, build keys and the plan output formats."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imagebuilder.config import PROJECT_ROOT, load_matrix
from imagebuilder.osinfo import OPERATING_SYSTEMS
from imagebuilder.planner import key_material, plan

DATA = Path(__file__).parent / "data"


def plan_json(root: Path, matrix: Path, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if home is not None:
        env["IMAGEBUILDER_HOME"] = str(home)
        env["PYTHONPATH"] = str(home)
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", "plan", "-m", str(matrix), "--offline", *args],
                          cwd=root, capture_output=True, text=True, env=env, timeout=60, check=True)


@pytest.fixture()
def cells():
    return {cell.id: cell for cell in plan(load_matrix(DATA / "matrix.yaml"))}


def test_expansion_exclude_include(cells) -> None:
    # 3 clouds x 4 os x 3 minors, less flatcar on qemu (3) and rocky 1.30 (3), plus one include.
    assert len(cells) == 36 - 3 - 3 + 1
    assert "qemu-flatcar-k8s-1.31" not in cells
    assert "qemu-rockylinux-9-k8s-1.30" not in cells
    assert "aws-rockylinux-9-k8s-1.30" in cells
    assert "openstack-ubuntu-2204-k8s-1.31" in cells


def test_cell_fields(cells) -> None:
    cell = cells["aws-ubuntu-2204-k8s-1.31"]
    assert cell.kubernetes_version == "1.31.5"
    assert cell.settings["instance_type"] == "m6i.large"  # the override
    assert cells["aws-debian-12-k8s-1.31"].settings["instance_type"] == "t3.large"  # the default
    assert cell.image_name == "capa-ami-ubuntu-2204-v1.31.5-{timestamp}"
    assert cell.downloads["kubeadm"].url == "https://dl.k8s.io/release/v1.31.5/bin/linux/amd64/kubeadm"
    # The override's arch names the cell as the arch dimension would.
    assert "qemu-debian-12-k8s-1.32" not in cells and cells["qemu-debian-12-arm64-k8s-1.32"].arch == "arm64"
    assert cells["qemu-debian-12-arm64-k8s-1.32"].downloads["runc"].url.endswith("/v1.2.4/runc.arm64")
    assert cells["aws-flatcar-k8s-1.31"].strategy == "sysext"
    assert len({c.build_key for c in cells.values()}) == len(cells)


def test_only_glob() -> None:
    selected = plan(load_matrix(DATA / "matrix.yaml"), ["qemu-debian-12-*"])
    assert [c.id for c in selected] == ["qemu-debian-12-k8s-1.30", "qemu-debian-12-k8s-1.31",
                                        "qemu-debian-12-arm64-k8s-1.32"]


def _copy_project(dest: Path) -> Path:
    shutil.copytree(PROJECT_ROOT, dest, ignore=shutil.ignore_patterns(".git", ".cache", ".venv", "build", "packer_cache", "__pycache__", "*.egg-info",
                                                                        "output", ".pytest_cache", ".hypothesis"))
    return dest


def test_build_keys_identical_across_clones_and_change_with_one_sum(tmp_path: Path) -> None:
    first = _copy_project(tmp_path / "one")
    second = _copy_project(tmp_path / "two")
    matrix = Path("tests/data/matrix.yaml")
    keys_one = {c["id"]: c["build_key"] for c in json.loads(plan_json(first, matrix, home=first).stdout)}
    keys_two = {c["id"]: c["build_key"] for c in json.loads(plan_json(second, matrix, home=second).stdout)}
    assert keys_one == keys_two

    lock_path = second / "tests/data/versions.lock.yaml"
    lock = yaml.safe_load(lock_path.read_text())
    lock["minors"]["1.31"]["components"]["runc"]["files"]["runc"]["sha256"]["amd64"] = "0" * 64
    lock_path.write_text(yaml.safe_dump(lock))
    changed = {c["id"]: c["build_key"] for c in json.loads(plan_json(second, matrix, home=second).stdout)}
    differing = {cell_id for cell_id in keys_one if keys_one[cell_id] != changed[cell_id]}
    # Every 1.31 cell changes (all amd64), and nothing else does.
    assert differing == {cell_id for cell_id in keys_one if cell_id.endswith("-k8s-1.31")}


def test_role_change_changes_every_key(tmp_path: Path) -> None:
    clone = _copy_project(tmp_path / "clone")
    matrix = Path("tests/data/matrix.yaml")
    before = {c["id"]: c["build_key"] for c in json.loads(plan_json(clone, matrix, home=clone).stdout)}
    (clone / "ansible").mkdir(exist_ok=True)
    (clone / "ansible" / "extra.txt").write_text("a change to the roles\n")
    after = {c["id"]: c["build_key"] for c in json.loads(plan_json(clone, matrix, home=clone).stdout)}
    assert all(before[cell_id] != after[cell_id] for cell_id in before)


def test_mirrors_do_not_change_keys_but_change_urls(tmp_path: Path) -> None:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    text = (DATA / "matrix.yaml").read_text()
    (tmp_path / "plain.yaml").write_text(text)
    (tmp_path / "mirrored.yaml").write_text(text + "mirrors:\n  kubernetes: http://mirror.internal/k8s\n")
    plain = {c.id: c for c in plan(load_matrix(tmp_path / "plain.yaml"))}
    mirrored = {c.id: c for c in plan(load_matrix(tmp_path / "mirrored.yaml"))}
    cell_id = "qemu-debian-12-k8s-1.31"
    assert plain[cell_id].build_key == mirrored[cell_id].build_key
    assert mirrored[cell_id].downloads["kubelet"].url == "http://mirror.internal/k8s/v1.31.5/bin/linux/amd64/kubelet"


def test_publish_only_settings_stay_out_of_the_key(tmp_path: Path) -> None:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    text = (DATA / "matrix.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text.replace("[us-east-1, eu-west-1]", "[us-east-1, eu-west-1, ap-south-1]"))
    (tmp_path / "c.yaml").write_text(text.replace("[us-east-1, eu-west-1]", "[eu-west-1]"))
    keys = [{c.id: c.build_key for c in plan(load_matrix(tmp_path / f"{n}.yaml"))} for n in "abc"]
    assert keys[0] == keys[1]  # one more copy region: same image
    assert keys[0]["aws-debian-12-k8s-1.31"] != keys[2]["aws-debian-12-k8s-1.31"]  # another build region


def test_how_the_local_image_is_built_and_tested_stays_out_of_the_key(tmp_path: Path) -> None:
    """The qemu builder and the boot test change how the image is made and checked, not the image."""
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    text = (DATA / "matrix.yaml").read_text()
    variants = {"a": "qemu: {}", "b": "qemu: {builder: packer, boot_test: false}", "c": "qemu: {memory_mb: 4096}"}
    for name, qemu in variants.items():
        (tmp_path / f"{name}.yaml").write_text(text.replace("qemu: {}", qemu, 1))
    keys = [{c.id: c.build_key for c in plan(load_matrix(tmp_path / f"{n}.yaml"))} for n in variants]
    cell_id = "qemu-debian-12-k8s-1.31"
    assert keys[0][cell_id] == keys[1][cell_id]
    assert keys[0][cell_id] != keys[2][cell_id]  # a setting that reaches the build still counts


def test_plan_formats() -> None:
    root = PROJECT_ROOT
    matrix = DATA / "matrix.yaml"
    as_json = json.loads(plan_json(root, matrix, "--format", "json").stdout)
    assert {"id", "os", "kubernetes", "kubernetes_version", "cloud", "build_key", "image_name"} <= set(as_json[0])
    github = json.loads(plan_json(root, matrix, "--format", "github-matrix").stdout)
    assert [entry["id"] for entry in github["include"]] == [c["id"] for c in as_json]
    make_targets = plan_json(root, matrix, "--format", "make").stdout.split()
    assert "build-qemu-debian-12" in make_targets and len(make_targets) == len(set(make_targets))
    table = plan_json(root, matrix, "--format", "table").stdout
    assert "31 cells" in table


def test_shipped_matrix_plans() -> None:
    cells = plan(load_matrix(PROJECT_ROOT / "matrix.yaml"))
    ids = {cell.id for cell in cells}
    assert "openstack-ubuntu-2204-k8s-1.33" in ids
    assert "openstack-ubuntu-2404-k8s-1.35" in ids and "openstack-ubuntu-2404-k8s-1.34" not in ids
    assert "qemu-flatcar-k8s-1.35" not in ids and "aws-rockylinux-9-k8s-1.33" not in ids
    assert {cell.cloud for cell in cells} == {"qemu", "aws", "gcp", "openstack", "azure"}
    assert {cell.os for cell in cells} == {"ubuntu-2204", "ubuntu-2404", "debian-12", "rockylinux-9", "flatcar"}


def test_arm64_cells_name_the_vendors_arm64_images_on_every_cloud(tmp_path: Path) -> None:
    """`arch: [amd64, arm64]` plans both, each with the vendor's image of its arch: Rocky's aarch64 AMIs
    and URLs, Ubuntu's arm64 AMI names, GCP's -arm64 families, Azure's arm64 offers and SKUs; a cloud where
    the vendor has no image of the arch is refused at the matrix's line."""
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    head = ('versions_file: versions.lock.yaml\nos: [ubuntu-2204, rockylinux-9]\nkubernetes: ["1.31"]\n'
            'clouds:\n  qemu: {}\n  aws: {}\n  gcp: {project_id: p}\n  azure: {resource_group: g}\n')
    (tmp_path / "both.yaml").write_text(head + "arch: [amd64, arm64]\n")
    printed = json.loads(plan_json(tmp_path, tmp_path / "both.yaml", "--format", "json").stdout)
    assert [(c["id"], c["arch"]) for c in printed if c["cloud"] == "aws"] == [
        ("aws-rockylinux-9-k8s-1.31", "amd64"), ("aws-rockylinux-9-arm64-k8s-1.31", "arm64"),
        ("aws-ubuntu-2204-k8s-1.31", "amd64"), ("aws-ubuntu-2204-arm64-k8s-1.31", "arm64")]
    assert len(printed) == 4 * 2 * 2
    cells = {c.id: c for c in plan(load_matrix(tmp_path / "both.yaml"))}
    assert {c.id: c.build_key for c in cells.values()} == {c["id"]: c["build_key"] for c in printed}
    base = {cell_id: cell.base_image for cell_id, cell in cells.items()}
    assert base["aws-ubuntu-2204-arm64-k8s-1.31"]["name_filter"] == "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-arm64-server-*"
    assert base["aws-ubuntu-2204-k8s-1.31"]["name_filter"] == "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
    assert base["aws-rockylinux-9-arm64-k8s-1.31"]["name_filter"].endswith("aarch64")
    assert base["aws-rockylinux-9-k8s-1.31"]["name_filter"].endswith("x86_64")
    assert base["qemu-rockylinux-9-arm64-k8s-1.31"]["source"].endswith("/aarch64/Rocky-9-GenericCloud-Base.latest.aarch64.qcow2")
    assert base["gcp-ubuntu-2204-arm64-k8s-1.31"]["family"] == "ubuntu-2204-lts-arm64"
    assert base["gcp-ubuntu-2204-k8s-1.31"]["family"] == "ubuntu-2204-lts"
    assert base["gcp-rockylinux-9-arm64-k8s-1.31"]["family"] == "rocky-linux-9-arm64"
    assert base["azure-rockylinux-9-arm64-k8s-1.31"]["offer"] == "rockylinux-aarch64"
    assert base["azure-rockylinux-9-k8s-1.31"]["offer"] == "rockylinux-x86_64"
    assert base["azure-ubuntu-2204-arm64-k8s-1.31"]["sku"] == "22_04-lts-arm64"
    assert cells["aws-ubuntu-2204-arm64-k8s-1.31"].downloads["kubelet"].url.endswith("/linux/arm64/kubelet")
    for cell_id, cell in cells.items():
        if cell.arch == "arm64":
            amd64 = cell_id.replace("-arm64-", "-")
            assert base[amd64] != base[cell_id] and cells[amd64].build_key != cell.build_key, cell_id

    (tmp_path / "flatcar.yaml").write_text(head.replace("[ubuntu-2204, rockylinux-9]", "[flatcar]")
                                           .replace("  qemu: {}\n", "") + "arch: [amd64, arm64]\n")
    result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "plan", "-m", str(tmp_path / "flatcar.yaml"),
                             "--offline"], capture_output=True, text=True)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.endswith("flatcar.yaml:8: arch[1]: flatcar has no arm64 base image on gcp "
                         "(gcp-flatcar-arm64-k8s-1.31) (exclude {os: flatcar, cloud: gcp, arch: arm64})"), line
    (tmp_path / "flatcar.yaml").write_text(head.replace("[ubuntu-2204, rockylinux-9]", "[flatcar]")
                                           .replace("  qemu: {}\n", "") + "arch: [amd64, arm64]\nexclude:\n"
                                           "  - {os: flatcar, cloud: \"[ga][cz]*\", arch: arm64}\n")
    assert sorted(c.id for c in plan(load_matrix(tmp_path / "flatcar.yaml"))) == [
        "aws-flatcar-arm64-k8s-1.31", "aws-flatcar-k8s-1.31", "azure-flatcar-k8s-1.31", "gcp-flatcar-k8s-1.31"]


VARIANT_HEAD = ('versions_file: versions.lock.yaml\nos: [ubuntu-2204, debian-12]\nkubernetes: ["1.31"]\n'
                'clouds:\n  qemu:\n    variants: [efi]\n  azure:\n    resource_group: g\n')


def test_variants_plan_extra_cells_and_leave_the_default_cells_alone(tmp_path: Path) -> None:
    """Each variant is one more cell per (os, minor, arch), with its own suffix, settings, base and key; the
    default cells are the cells (and keys) of the same matrix without variants."""
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    (tmp_path / "plain.yaml").write_text(VARIANT_HEAD.replace("    variants: [efi]\n", "  qemu_: {}\n")
                                         .replace("  qemu:\n  qemu_: {}\n", "  qemu: {}\n"))
    (tmp_path / "variants.yaml").write_text(VARIANT_HEAD + "    variants: [cvm, trustedlaunch]\n"
                                            "exclude:\n  - {os: debian-12, variant: cvm}\n")
    plain = {c.id: c for c in plan(load_matrix(tmp_path / "plain.yaml"))}
    cells = {c.id: c for c in plan(load_matrix(tmp_path / "variants.yaml"))}
    assert set(cells) - set(plain) == {"qemu-ubuntu-2204-efi-k8s-1.31", "qemu-debian-12-efi-k8s-1.31",
                                       "azure-ubuntu-2204-cvm-k8s-1.31", "azure-ubuntu-2204-trustedlaunch-k8s-1.31",
                                       "azure-debian-12-trustedlaunch-k8s-1.31"}
    assert {cell_id: plain[cell_id].build_key for cell_id in plain} == {
        cell_id: cells[cell_id].build_key for cell_id in plain}
    assert all(cells[cell_id].variant is None for cell_id in plain)

    cvm = cells["azure-ubuntu-2204-cvm-k8s-1.31"]
    assert cvm.variant == "cvm" and cvm.base_image == {
        "publisher": "Canonical", "offer": "0001-com-ubuntu-confidential-vm-jammy", "sku": "22_04-lts-cvm"}
    assert cvm.settings["vm_size"] == "Standard_DC2as_v5"
    trusted = cells["azure-ubuntu-2204-trustedlaunch-k8s-1.31"]
    assert trusted.base_image == plain["azure-ubuntu-2204-k8s-1.31"].base_image
    assert trusted.settings == plain["azure-ubuntu-2204-k8s-1.31"].settings
    assert trusted.build_key != plain["azure-ubuntu-2204-k8s-1.31"].build_key  # the variant alone moves it
    assert trusted.image_name.startswith("capi-ubuntu-2204-trustedlaunch-k8s-1.31/")
    efi = cells["qemu-debian-12-efi-k8s-1.31"]
    assert efi.base_image == plain["qemu-debian-12-k8s-1.31"].base_image
    assert efi.image_name.startswith("debian-12-efi-kube-v1.31.5-")
    assert len({c.build_key for c in cells.values()}) == len({c.image_name for c in cells.values()}) == len(cells)


def test_rules_match_arch_and_variant(tmp_path: Path) -> None:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    (tmp_path / "m.yaml").write_text(
        VARIANT_HEAD + "arch: [amd64, arm64]\nexclude:\n  - {cloud: azure, arch: arm64}\n"
        "  - {variant: efi, arch: arm64}\n  - {os: debian-12, cloud: qemu, variant: none}\n"
        "include:\n  - {os: ubuntu-2204, cloud: azure, arch: arm64, variant: none}\n"
        "overrides:\n  - match: {variant: efi}\n    settings: {memory_mb: 4096}\n"
        "  - match: {arch: arm64, cloud: qemu}\n    ansible_vars: {on_arm: true}\n")
    cells = {c.id: c for c in plan(load_matrix(tmp_path / "m.yaml"))}
    assert sorted(cells) == sorted([
        "qemu-ubuntu-2204-k8s-1.31", "qemu-ubuntu-2204-arm64-k8s-1.31", "qemu-ubuntu-2204-efi-k8s-1.31",
        "qemu-debian-12-efi-k8s-1.31",
        "azure-ubuntu-2204-k8s-1.31", "azure-debian-12-k8s-1.31", "azure-ubuntu-2204-arm64-k8s-1.31"])
    assert {c.id for c in cells.values() if c.settings.get("memory_mb") == 4096} == {
        "qemu-ubuntu-2204-efi-k8s-1.31", "qemu-debian-12-efi-k8s-1.31"}
    assert {c.id for c in cells.values() if c.ansible_vars} == {"qemu-ubuntu-2204-arm64-k8s-1.31"}
    assert cells["azure-ubuntu-2204-arm64-k8s-1.31"].base_image["sku"] == "22_04-lts-arm64"


def test_every_declared_variant_is_a_valid_change_of_its_cloud() -> None:
    """A variant's settings are settings of its cloud, a variant with its own base image has one
    somewhere in the OS table (else nothing could ever plan it), and one built on another variant's
    image names a variant of its cloud that starts from a base image itself."""
    from imagebuilder.config import cloud_settings
    from imagebuilder.osinfo import OPERATING_SYSTEMS

    for cloud, model in cloud_settings().items():
        for name, variant in model.VARIANTS.items():
            assert set(variant.settings) <= set(model.model_fields) - {"variants"}, (cloud, name)
            if variant.own_base_image:
                assert any(name in info.variant_images.get(cloud, {}) for info in OPERATING_SYSTEMS.values())
            if variant.built_on is not None:  # built on another variant of the same cloud, never on itself
                assert variant.built_on in model.VARIANTS and variant.built_on != name, (cloud, name)
                assert not model.VARIANTS[variant.built_on].built_on, (cloud, name)


def test_the_readme_matrix_example_plans(tmp_path: Path) -> None:
    """The matrix section's example, with arch lists and variants, is a matrix that plans."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    shutil.copy(PROJECT_ROOT / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    (tmp_path / "matrix.yaml").write_text(example)
    cells = {cell.id: cell for cell in plan(load_matrix(tmp_path / "matrix.yaml"))}
    assert {"aws-ubuntu-2404-arm64-k8s-1.35", "azure-ubuntu-2204-cvm-k8s-1.35", "qemu-debian-12-efi-k8s-1.35"} <= set(cells)
    assert cells["aws-ubuntu-2404-arm64-k8s-1.35"].settings["instance_type"] == "m7g.large"


def test_a_variant_that_cannot_be_built_here_fails_before_packer(tmp_path: Path, monkeypatch) -> None:
    """Azure's security types need the azure plugin (Packer >= 1.7): with Packer 1.6.6 the cell stops
    before Packer in one line. The qemu efi variant is built offline, never by the Packer template."""
    from imagebuilder import pipeline
    from imagebuilder.errors import UserError
    from imagebuilder.pipeline import unbuilt_variant

    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    (tmp_path / "m.yaml").write_text(VARIANT_HEAD + "    variants: [cvm, trustedlaunch]\nexclude:\n"
                                     "  - {os: debian-12, variant: cvm}\n")
    cells = {c.id: c for c in plan(load_matrix(tmp_path / "m.yaml"))}
    monkeypatch.setattr(pipeline.packer, "installed_version", lambda: (1, 6, 6))
    unbuilt_variant(cells["azure-ubuntu-2204-k8s-1.31"])  # a default cell builds
    unbuilt_variant(cells["qemu-debian-12-efi-k8s-1.31"])  # built offline
    with pytest.raises(UserError, match=r"^azure-ubuntu-2204-cvm-k8s-1.31: the cvm variant's security_type "
                                        r"ConfidentialVM needs the azure plugin \(github.com/hashicorp/azure .*\); "
                                        r"Packer 1.6.6's built-in azure-arm has no security_type \| fix: Packer >= 1.7.0 "
                                        r".*exclude \{cloud: azure, variant: cvm\}$"):
        unbuilt_variant(cells["azure-ubuntu-2204-cvm-k8s-1.31"])
    monkeypatch.setattr(pipeline.packer, "installed_version", lambda: (1, 11, 2))
    unbuilt_variant(cells["azure-ubuntu-2204-cvm-k8s-1.31"])
    unbuilt_variant(cells["azure-debian-12-trustedlaunch-k8s-1.31"])
    # Ubuntu's cloud image boots UEFI as it is (osinfo LocalBase.uefi): its efi cell builds with either builder.
    ubuntu = cells["qemu-ubuntu-2204-efi-k8s-1.31"]
    assert ubuntu.os_info.local_base.uefi
    unbuilt_variant(ubuntu)
    unbuilt_variant(dataclasses.replace(ubuntu, settings={**ubuntu.settings, "builder": "packer"}))
    # The Packer template boots BIOS: an efi cell of a vendor image without an EFI system partition stops.
    monkeypatch.setitem(OPERATING_SYSTEMS, "ubuntu-2204", dataclasses.replace(
        ubuntu.os_info, local_base=dataclasses.replace(ubuntu.os_info.local_base, uefi=False)))
    with pytest.raises(UserError, match=r"^qemu-ubuntu-2204-efi-k8s-1.31: the efi variant is made by the offline "
                                        r"builder only"):
        unbuilt_variant(ubuntu)
    efi = cells["qemu-debian-12-efi-k8s-1.31"]
    packer_cell = dataclasses.replace(efi, settings={**efi.settings, "builder": "packer"})
    with pytest.raises(UserError, match=r"fix: clouds.qemu.builder: auto or offline"):
        unbuilt_variant(packer_cell)

def test_arm64_cells_build_where_their_cloud_can(tmp_path: Path) -> None:
    """AWS builds arm64 on its Graviton instance type (the amd64 cell's key keeps only its own type);
    the local outputs are amd64 here: their arm64 cells are planned and refused before the build."""
    from imagebuilder.errors import UserError
    from imagebuilder.pipeline import unbuilt_arch
    from imagebuilder.targets import target_of

    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    (tmp_path / "m.yaml").write_text('os: [ubuntu-2204]\nkubernetes: ["1.31"]\narch: [amd64, arm64]\n'
                                     'clouds:\n  qemu: {}\n  raw: {}\n  aws: {}\n')
    cells = {c.id: c for c in plan(load_matrix(tmp_path / "m.yaml"))}
    arm, amd = cells["aws-ubuntu-2204-arm64-k8s-1.31"], cells["aws-ubuntu-2204-k8s-1.31"]
    assert key_material(arm, {})["settings"]["instance_type"] == "t4g.large"
    assert "instance_type_arm64" not in key_material(amd, {})["settings"]
    assert key_material(amd, {})["settings"]["instance_type"] == "t3.large"
    assert (arm.image_name, amd.image_name) == ("capa-ami-ubuntu-2204-arm64-v1.31.5-{timestamp}",
                                                "capa-ami-ubuntu-2204-v1.31.5-{timestamp}")
    assert (target_of(arm), target_of(amd)) == ("build-ami-ubuntu-2204-arm64", "build-ami-ubuntu-2204")
    unbuilt_arch(arm)
    unbuilt_arch(cells["qemu-ubuntu-2204-k8s-1.31"])
    for cell_id, cloud in (("qemu-ubuntu-2204-arm64-k8s-1.31", "qemu"), ("raw-ubuntu-2204-arm64-k8s-1.31", "raw")):
        with pytest.raises(UserError, match=rf"^{cell_id}: {cloud} builds amd64 images only \(the local build runs "
                                            rf"the image on this amd64 host.*\) \| fix: exclude \{{cloud: {cloud}, "
                                            r"arch: arm64\}$"):
            unbuilt_arch(cells[cell_id])
