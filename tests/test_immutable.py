"""The immutable variant (image-builder's build-qemu-ubuntu-2404-immutable and
build-kubevirt-qemu-ubuntu-2404-immutable): planned and rendered for qemu and kubevirt (the qemu HCL
through the real `packer validate`), its build's seed, and the immutable role run for real against a
GPT disk image on a loop device (its partition and fstab tasks, the binds, a second run changing
nothing), with the validate role's fstab checks read against what it wrote.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from imagebuilder import immutable, packer, qemu, render
from imagebuilder.clouds import registry
from imagebuilder.config import load_matrix
from imagebuilder.planner import plan
from imagebuilder.render import render_cells

DATA = Path(__file__).parent / "data"
ANSIBLE_DIR = REPO / "ansible"
CONTRACT = yaml.safe_load((ANSIBLE_DIR / "roles/imagebuilder/defaults/main.yml").read_text())
MATRIX = """versions_file: versions.lock.yaml
os: [ubuntu-2404, debian-12]
kubernetes: ["1.31"]
clouds:
  qemu:
    variants: [immutable]
  kubevirt:
    registry: registry.example.com/capi/node
    variants: [immutable]
exclude:
  - {os: debian-12, variant: immutable}
"""
CELLS = ("qemu-ubuntu-2404-immutable-k8s-1.31", "kubevirt-ubuntu-2404-immutable-k8s-1.31")


@pytest.fixture
def cells(tmp_path: Path) -> dict:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    (tmp_path / "m.yaml").write_text(MATRIX)
    return {cell.id: cell for cell in plan(load_matrix(tmp_path / "m.yaml"))}


def test_the_variant_plans_for_qemu_and_kubevirt_with_image_builders_names(cells: dict) -> None:
    for cell_id in CELLS:
        cell = cells[cell_id]
        assert immutable.of(cell) and cell.ansible_vars == {immutable.ANSIBLE_VAR: True}
        assert cell.settings["disk_size_mb"] == immutable.VARIANT.settings["disk_size_mb"]
        assert registry.get(cell.cloud).variant_unbuilt(cell) is None
    names = {registry.get(c.cloud).image_builder_target(c.os, c.arch, c.variant) for c in cells.values() if c.variant}
    assert names == {"build-qemu-ubuntu-2404-immutable", "build-kubevirt-qemu-ubuntu-2404-immutable"}
    plain = cells["qemu-ubuntu-2404-k8s-1.31"]
    assert not immutable.of(plain) and plain.build_key != cells[CELLS[0]].build_key
    # image-builder's immutable targets are qemu's and kubevirt-qemu's: not a variant of the other local outputs.
    having = {name for name, cloud in registry.clouds().items() if immutable.NAME in cloud.settings.VARIANTS}
    assert having == {"qemu", "kubevirt"}


def test_an_immutable_cell_the_offline_build_would_make_is_refused(tmp_path: Path) -> None:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    (tmp_path / "m.yaml").write_text(MATRIX.replace("exclude:\n  - {os: debian-12, variant: immutable}\n", ""))
    cell = {c.id: c for c in plan(load_matrix(tmp_path / "m.yaml"))}["qemu-debian-12-immutable-k8s-1.31"]
    reason = registry.get("qemu").variant_unbuilt(cell)
    assert reason is not None and reason.startswith(f"{cell.id}: the immutable variant is made by the Packer build")
    assert "fix: exclude {cloud: qemu, os: debian-12, variant: immutable}" in reason


def test_the_build_seed_keeps_cloud_init_from_growing_the_root(cells: dict) -> None:
    seeds = {cell_id: yaml.safe_load(qemu.seed_files("packer", ["ssh-ed25519 AAAA k"],
                                                     extra_config=immutable.seed_config(cells[cell_id]))["user-data"])
             for cell_id in (CELLS[0], "qemu-ubuntu-2404-k8s-1.31")}
    assert seeds[CELLS[0]]["growpart"] == {"mode": "off"} and seeds[CELLS[0]]["resize_rootfs"] is False
    assert seeds[CELLS[0]]["users"][0]["name"] == "packer"
    assert "growpart" not in seeds["qemu-ubuntu-2404-k8s-1.31"]


def test_the_cells_render_and_the_qemu_one_passes_packer_validate(cells: dict, tmp_path: Path) -> None:
    rendered = {r.cell.id: r for r in render_cells([cells[c] for c in CELLS], tmp_path / "out", (1, 6, 6))}
    for cell_id in CELLS:
        variables = json.loads((rendered[cell_id].directory / "ansible-vars.json").read_text())
        assert variables[immutable.ANSIBLE_VAR] is True
        assert not any(name.startswith("imagebuilder_immutable_") for name in variables)  # the contract's defaults
        assert re.search(r"^qemu_disk_size_mb\s+= 12288$", (rendered[cell_id].directory / "cell.auto.pkrvars.hcl").read_text(), re.M)
    if shutil.which("packer") is None:
        pytest.skip("packer is not installed")
    directory = rendered[CELLS[0]].directory
    result = subprocess.run(["packer", "fmt", "-check", "."], cwd=directory, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    validated = render.validate(rendered[CELLS[0]], packer.installed_version())  # the real `packer validate`
    assert validated.ok and not validated.parsed_only, validated.output


def test_node_yml_runs_the_role_only_for_an_immutable_cell() -> None:
    play = yaml.safe_load((ANSIBLE_DIR / "node.yml").read_text())[0]
    roles = [r["role"] for r in play["roles"]]
    assert roles[-2:] == ["immutable", "validate"]  # after sysprep, before the checks
    condition = f"{immutable.ANSIBLE_VAR} | default(false) | bool"
    assert play["roles"][-2]["when"] == condition
    early = [t for t in play["pre_tasks"] if t["ansible.builtin.include_role"]["name"] == "immutable"]
    assert early and early[0]["when"] == condition and early[0] is play["pre_tasks"][0]
    assert CONTRACT[immutable.ANSIBLE_VAR] is False  # the offline builder's chroot never runs it


# ------------------------------------------------------------------ the role on a loop device

ROOT_MIB = 40  # the root partition the test disk starts with: the role's root size, so growpart has nothing to do
PATHS = ["/etc", "/home", "/root", "/var/lib/kubelet", "/var/log"]  # fewer than the contract's: seconds, not a minute


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60, **kwargs)


def _playbook(tmp_path: Path, tree: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "play.yml").write_text("- hosts: all\n  gather_facts: true\n  roles:\n    - role: immutable\n")
    variables = {
        "imagebuilder_build_key": "k" * 64, "imagebuilder_versions": {}, "imagebuilder_downloads": {},
        "imagebuilder_pause_image": "registry.k8s.io/pause:3.10", "imagebuilder_cloud": "qemu",
        "imagebuilder_os_family": "debian", "containerd_install_method": "package", "kubernetes_install_method": "package",
        immutable.ANSIBLE_VAR: True, "imagebuilder_immutable_persistent_paths": PATHS,
        # The tree on the loop device instead of this host's root; no packages installed, no services stopped here.
        "immutable_target": str(tree), "immutable_root_partition_size_mb": ROOT_MIB,
        "immutable_packages": [], "immutable_stopped_services": [], "ansible_python_interpreter": sys.executable,
    }
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    env = {"ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
           "ANSIBLE_NOCOLOR": "1", "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "HOME": str(tmp_path)}
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           str(tmp_path / "play.yml"), "-e", f"@{tmp_path / 'vars.json'}"],
                          capture_output=True, text=True, env=env, timeout=300,
                          stdin=subprocess.DEVNULL)  # Ansible refuses a stdin an earlier test left non-blocking


def _recap(output: str) -> dict[str, int]:
    match = re.search(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output)
    assert match, output[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups())))


def _loop_devices_work() -> str | None:
    import os

    if os.geteuid() != 0:
        return "needs root (a loop device, mkfs, mount)"
    missing = [tool for tool in ("losetup", "sfdisk", "parted", "growpart", "mkfs.ext4", "findmnt", "blkid", "unshare")
               if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (apt-get install parted cloud-guest-utils)" if missing else None


def test_the_role_partitions_a_loop_disk_seeds_the_paths_and_writes_fstab(tmp_path: Path) -> None:
    reason = _loop_devices_work()
    if reason:
        pytest.skip(reason)
    disk, tree = tmp_path / "disk.img", tmp_path / "root"
    with disk.open("wb") as f:
        f.truncate(128 * 1024**2)
    loop = _run(["losetup", "--find", "--show", "--partscan", str(disk)]).stdout.strip()
    mounted = False
    try:
        _run(["sfdisk", "--quiet", loop], input=f"label: gpt\nstart=2048, size={ROOT_MIB * 2048}, type=L, name=root\n")
        _run(["partx", "--update", loop])
        _run(["mkfs.ext4", "-q", "-L", "root", f"{loop}p1"])
        tree.mkdir()
        _run(["mount", f"{loop}p1", str(tree)])
        mounted = True
        for path, text in (("etc/fstab", "LABEL=root / ext4 discard,errors=remount-ro 0 1\n"), ("etc/kubernetes/x.conf", "x\n"),
                           ("home/user/.profile", "p\n"), ("var/log/build.log", "log\n")):
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            (tree / path).write_text(text)
        (tree / "root").mkdir(mode=0o700)

        first = _playbook(tmp_path, tree)
        assert first.returncode == 0 and _recap(first.stdout)["changed"] > 0, first.stdout[-4000:] + first.stderr[-2000:]
        second = _playbook(tmp_path, tree)
        assert second.returncode == 0 and _recap(second.stdout)["changed"] == 0, second.stdout[-4000:]

        label, mount = CONTRACT["imagebuilder_immutable_data_label"], CONTRACT["imagebuilder_immutable_data_mount"]
        table = _run(["sfdisk", "--dump", loop]).stdout
        assert re.search(rf'{loop}p2 : start=\s*{(1 + ROOT_MIB) * 2048},.*name="{label}"', table), table
        assert _run(["blkid", "-o", "value", "-s", "LABEL", f"{loop}p2"]).stdout.strip() == label
        data = tree / mount.lstrip("/") / "persistent"
        assert (data / "etc/kubernetes/x.conf").read_text() == "x\n" and (data / "var/log/build.log").read_text() == "log\n"
        assert (data / "home/user/.profile").read_text() == "p\n" and (data / "root").stat().st_mode & 0o777 == 0o700
        fstab = [line.split() for line in (tree / "etc/fstab").read_text().splitlines()]
        assert ["LABEL=root", "/", "ext4", "ro,discard,errors=remount-ro", "0", "1"] in fstab
        assert ["LABEL=" + label, mount, "ext4", "defaults,x-systemd.device-timeout=30s", "0", "2"] in fstab
        for path in PATHS:
            assert [f"{mount}/persistent{path}", path, "none", f"bind,x-systemd.requires-mounts-for={mount}", "0", "0"] in fstab
        assert {tuple(e[:3]) for e in fstab if e[2] == "tmpfs"} == {("tmpfs", p, "tmpfs")
                                                                   for p in CONTRACT["imagebuilder_immutable_tmpfs_paths"]}
        # The binds are live (what the build does afterwards lands on the data partition), /etc's copy has the final fstab.
        (tree / "etc/after").write_text("a\n")
        assert (data / "etc/after").read_text() == "a\n"
        assert (data / "etc/fstab").read_text() == (tree / "etc/fstab").read_text()
        cloud_cfg = yaml.safe_load((tree / "etc/cloud/cloud.cfg.d/99-imagebuilder-immutable.cfg").read_text())
        assert cloud_cfg == {"growpart": {"mode": "off"}, "resize_rootfs": False}
        dropin = (tree / "etc/systemd/system/cloud-init-local.service.d/10-imagebuilder-immutable.conf").read_text()
        assert f"RequiresMountsFor={' '.join(sorted(PATHS, key=str.lower))}" in dropin.splitlines()
        _validate_reads_the_fstab(tree, tmp_path)
    finally:
        if mounted:
            subprocess.run(["umount", "--recursive", str(tree)], capture_output=True, timeout=60)
        subprocess.run(["losetup", "--detach", loop], capture_output=True, timeout=60)


def _validate_reads_the_fstab(tree: Path, tmp_path: Path) -> None:
    """The validate role's immutable checks (as the build runs them: fstab, no mounts) pass against the
    fstab the role wrote, seen as /etc/fstab in a private mount namespace."""
    from imagebuilder import guestcheck

    variables = {"imagebuilder_immutable": True, "imagebuilder_immutable_persistent_paths": PATHS,
                 "imagebuilder_versions": {"kubernetes": "1.31.4", "containerd": "1", "runc": "1", "crictl": "1",
                                           "cni_plugins": "1"},
                 "imagebuilder_build_key": "k", "imagebuilder_pause_image": "p", "imagebuilder_cloud": "qemu",
                 "containerd_install_method": "package", "kubernetes_install_method": "package", "imagebuilder_images": [],
                 "imagebuilder_family": "debian", "validate_runtime_checks": False}
    namespace = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 f'mount --bind {tree}/etc/fstab /etc/fstab && eval "$0"']
    with guestcheck.GuestSession(namespace, become="") as session:
        checks = [c for c in guestcheck.RoleRunner(variables).run(session) if c.name.startswith("immutable: ")]
    assert len(checks) == 2 + len(PATHS) + len(CONTRACT["imagebuilder_immutable_tmpfs_paths"]), checks
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
