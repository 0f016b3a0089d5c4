"""The local qemu target's machinery: base disks, seeds, the KVM probe, a real Packer build, the boot test."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mirror import serve_directory  # noqa: E402

from imagebuilder.distributions import debian, ubuntu  # noqa: E402
from imagebuilder.errors import UserError  # noqa: E402
from imagebuilder.qemu import (  # noqa: E402
    Expected,
    make_seed_iso,
    make_ssh_key,
    probe_boot_sector,
    probe_kernel,
    release_fields,
    write_seed_dir,
)

REPO = Path(__file__).resolve().parents[1]


def _test_cache() -> Path:
    """The cache tests share from one run to the next (as in conftest: $IMAGEBUILDER_TEST_CACHE)."""
    path = Path(os.environ.get("IMAGEBUILDER_TEST_CACHE", REPO / ".cache" / "tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _debugfs_cat(disk: Path, offset: int, path: str) -> str:
    proc = subprocess.run(["debugfs", "-R", f"cat {path}", f"{disk}?offset={offset}"],
                          capture_output=True, text=True, check=True)
    return proc.stdout


def _partitions(disk: Path) -> dict:
    proc = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)["partitiontable"]


def _isoinfo(iso: Path, *args: str) -> str:
    return subprocess.run(["isoinfo", "-i", str(iso), *args], capture_output=True, text=True, check=True).stdout


# --- fast ------------------------------------------------------------------------------


def test_partitioned_disk_holds_the_tree_at_the_partition_offset(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    disk = tmp_path / "disk.raw"
    fs_uuid = "0f5a6c1e-1111-4222-8333-444455556666"

    debian.write_partitioned_disk(tree, disk, 64 * 1024**2, fs_uuid)

    table = _partitions(disk)
    assert table["label"] == "dos"
    assert len(table["partitions"]) == 1
    part = table["partitions"][0]
    assert part["start"] * 512 == debian.PARTITION_START
    assert part["bootable"] is True
    assert _debugfs_cat(disk, debian.PARTITION_START, "/etc/os-release") == 'ID=debian\nVERSION_ID="12"\n'
    fsck = subprocess.run(["e2fsck", "-fn", f"{disk}?offset={debian.PARTITION_START}"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    info = subprocess.run(["dumpe2fs", "-h", f"{disk}?offset={debian.PARTITION_START}"],
                          capture_output=True, text=True, check=True).stdout
    assert fs_uuid in info
    assert disk.stat().st_blocks * 512 < disk.stat().st_size // 4  # sparse


def test_unreachable_debian_mirror_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with serve_directory(tmp_path / "empty") as base_url:  # a mirror with no Debian on it
        spec = debian.BaseSpec(mirror=f"{base_url}/debian", security_mirror=f"{base_url}/debian-security")
        with pytest.raises(UserError) as err:
            debian.base_disk(spec, cache=tmp_path / "cache")
    message = str(err.value)
    assert f"{base_url}/debian" in message and "Release" in message and "\n" not in message
    assert [p.name for p in (tmp_path / "cache" / "base").iterdir()] == [f"{spec.key}.lock"]


def test_base_spec_key_follows_every_input() -> None:
    base = debian.BaseSpec()
    assert base.key == debian.BaseSpec().key
    assert debian.BaseSpec(mirror="http://mirror.example/debian").key != base.key
    assert debian.BaseSpec(packages=(*debian.PACKAGES, "vim")).key != base.key
    assert debian.BaseSpec(script_version=debian.SCRIPT_VERSION + 1).key != base.key
    assert base.root_uuid != debian.BaseSpec(suite="trixie").root_uuid


def test_seed_iso_carries_the_throwaway_key(tmp_path: Path) -> None:
    key = make_ssh_key(tmp_path)
    assert key.public.startswith("ssh-ed25519 ")
    iso = make_seed_iso(tmp_path / "seed.iso", "debian", [key.public], instance_id="iid-test")

    assert "Volume id: cidata" in _isoinfo(iso, "-d")
    user_data = _isoinfo(iso, "-R", "-x", "/user-data")
    assert user_data.startswith("#cloud-config\n")
    assert "- name: debian" in user_data
    assert key.public in user_data
    assert "instance-id: iid-test" in _isoinfo(iso, "-R", "-x", "/meta-data")


def test_seed_dir_for_packer_cd_files(tmp_path: Path) -> None:
    files = write_seed_dir(tmp_path / "seed", "packer", ["ssh-ed25519 AAAA test"])
    assert sorted(p.name for p in files) == ["meta-data", "user-data"]
    assert "ssh-ed25519 AAAA test" in (tmp_path / "seed" / "user-data").read_text()


def test_probe_boot_sector_reports_under_tcg(tmp_path: Path) -> None:
    # The probe's hand-written boot sector must really print and exit, or every probe says "tcg".
    assert probe_boot_sector(tmp_path / "probe.img", "tcg", timeout=60) is True


def _fake_release(root: Path, content: bytes) -> str:
    (root / "jammy").mkdir(parents=True)
    (root / "jammy" / "fake-cloudimg-amd64.img").write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    (root / "jammy" / "SHA256SUMS").write_text(f"{'0' * 64} *other.img\n{digest} *fake-cloudimg-amd64.img\n")
    return digest


def test_ubuntu_download_rejects_a_wrong_checksum(tmp_path: Path) -> None:
    content = os.urandom(256 * 1024)
    digest = _fake_release(tmp_path / "www", content)
    cache = tmp_path / "cache"
    with serve_directory(tmp_path / "www") as base_url:
        url = f"{base_url}/jammy/fake-cloudimg-amd64.img"
        wrong = hashlib.sha256(b"something else").hexdigest()
        with pytest.raises(UserError) as err:
            ubuntu.base_image("ubuntu-2204", url=url, sha256=wrong, cache=cache)
        message = str(err.value)
        assert url in message and digest in message and wrong in message and "\n" not in message
        assert not any(p.is_file() for p in cache.rglob("*")), "nothing may be left behind"

        with pytest.raises(UserError, match="not 64 hex digits"):
            ubuntu.base_image("ubuntu-2204", url=url, sha256="abc", cache=cache)

        got = ubuntu.base_image("ubuntu-2204", url=url, cache=cache)  # checksum from SHA256SUMS
        assert got.sha256 == digest
        assert got.disk.read_bytes() == content

    # Cached by checksum: served no more, still there.
    again = ubuntu.base_image("ubuntu-2204", url=url, sha256=digest, cache=cache)
    assert again.disk == got.disk


def test_ubuntu_unreachable_mirror_is_a_clear_error(tmp_path: Path) -> None:
    with serve_directory(tmp_path) as base_url:
        pass  # the port is closed again
    with pytest.raises(UserError, match="cannot download"):
        ubuntu.base_image("ubuntu-2404", url=f"{base_url}/x.img", sha256="0" * 64, cache=tmp_path)
    with pytest.raises(UserError, match="not an Ubuntu release"):
        ubuntu.default_url("debian-12")
    assert ubuntu.default_url("ubuntu-2404").endswith("ubuntu-24.04-server-cloudimg-amd64.img")


def test_expectations_and_provenance_parsing() -> None:
    with pytest.raises(ValueError, match="unknown expectation"):
        Expected.from_dict({"build_key": "x", "kubernetes": "1.31"})
    node = Expected.from_dict({"kubernetes_version": "1.31.4"})
    assert node.units_active == ("containerd",) and node.units_enabled == ("kubelet",)
    assert Expected.from_dict({"build_key": "k"}).units_active == ()
    assert release_fields('# c\nIMAGEBUILDER_BUILD_KEY="abc"\nX=1\n') == {"IMAGEBUILDER_BUILD_KEY": "abc", "X": "1"}


# --- slow: real base disk, real Packer build, real boots -------------------------------


@pytest.fixture(scope="module")
def debian_base() -> debian.BaseDisk:
    started = time.monotonic()
    base = debian.base_disk(cache=_test_cache())
    print(f"\n[stage] debian base disk: {time.monotonic() - started:.1f}s "
          f"(built in {base.manifest['seconds']}, cached at {base.dir})", file=sys.stderr)
    return base


@pytest.mark.slow
def test_debian_base_disk(debian_base: debian.BaseDisk) -> None:
    table = _partitions(debian_base.disk)
    assert len(table["partitions"]) == 1
    assert table["partitions"][0]["start"] * 512 == debian_base.partition_offset
    offset = debian_base.partition_offset
    os_release = _debugfs_cat(debian_base.disk, offset, "/usr/lib/os-release")
    assert 'VERSION_ID="12"' in os_release and "ID=debian" in os_release
    assert _debugfs_cat(debian_base.disk, offset, "/etc/fstab").startswith(f"UUID={debian_base.root_uuid} / ext4")
    assert _debugfs_cat(debian_base.disk, offset, "/etc/machine-id") == ""
    assert _debugfs_cat(debian_base.disk, offset, "/etc/resolv.conf") == ""  # nothing of the build host
    fsck = subprocess.run(["e2fsck", "-fn", f"{debian_base.disk}?offset={offset}"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    assert debian_base.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    assert debian_base.initrd.stat().st_size > 1024**2
    assert debian_base.key == debian.BaseSpec().key


@pytest.mark.slow
def test_debian_base_disk_cache_hit(debian_base: debian.BaseDisk) -> None:
    before = debian_base.disk.stat()
    again = debian.base_disk(cache=_test_cache())
    assert again.dir == debian_base.dir
    assert again.manifest["built"] == debian_base.manifest["built"]
    after = again.disk.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.slow
def test_kernel_probe_reaches_initramfs_userspace_under_tcg(debian_base: debian.BaseDisk) -> None:
    # What the KVM probe looks for must show up when the accelerator works (TCG always does).
    assert probe_kernel(debian_base.kernel, debian_base.initrd, "tcg", timeout=300) is True
    assert probe_kernel(debian_base.initrd, debian_base.initrd, "tcg", timeout=60) is False


# --- the offline build and the one-connection boot test (fast parts) -----------------------


def test_validate_role_runs_through_one_agent_connection(tmp_path: Path) -> None:
    """The role's own tasks and checks template, walked against this host through the agent."""
    from imagebuilder import guestcheck

    variables = {
        "imagebuilder_versions": {"kubernetes": "1.31.4", "containerd": "1.7.24", "runc": "1.2.3",
                                  "crictl": "1.31.1", "cni_plugins": "1.6.1"},
        "imagebuilder_build_key": "k" * 64, "imagebuilder_pause_image": "registry.k8s.io/pause:3.10",
        "imagebuilder_cloud": "qemu",
        "validate_hygiene_checks": False,
    }
    with guestcheck.GuestSession(["sh", "-c"], become="") as session:
        checks = guestcheck.role_checks(session, variables)
        assert session.command(["sh", "-c", "echo $X"], env={"X": "y"})["stdout"] == "y"
    names = [c.name for c in checks]
    assert "binary: kubeadm version" in names and "sysctl live: net.ipv4.ip_forward" in names
    assert "hygiene: empty machine-id" not in names  # the role's own switch, honoured
    kubeadm = next(c for c in checks if c.name == "binary: kubeadm version")
    assert not kubeadm.ok and 'should print "v1.31.4"' in kubeadm.detail  # no kubeadm on this host


def test_role_runner_follows_loops_per_item_and_include_vars_as_ansible_does(tmp_path: Path) -> None:
    """``when`` per item, loop_var, and include_vars over the defaults but under the cell's variables."""
    from imagebuilder import guestcheck

    role = tmp_path / "validate"
    (role / "tasks").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "defaults/main.yml").write_text("color: red\n")
    (tmp_path / "extra.yml").write_text("color: blue\nshape: round\nsize: small\n")
    (role / "tasks/main.yml").write_text(f"""
- name: Load
  ansible.builtin.include_vars:
    file: "{tmp_path}/{{{{ item }}}}.yml"
  loop: [extra, missing]
  when: item != 'missing'
- name: Echo
  ansible.builtin.command:
    argv: [echo, "{{{{ word }}}}"]
  loop: [a, b, c]
  loop_control:
    loop_var: word
  when: word != 'b'
  register: echoes
- name: Evaluate the checks
  ansible.builtin.set_fact:
    validate_results: >-
      {{{{ [{{'name': 'vars', 'ok': color == 'blue' and shape == 'round' and size == 'large', 'detail': ''}},
            {{'name': 'echo', 'ok': echoes.results | map(attribute='stdout', default='-') | join == 'a-c',
              'detail': echoes.results | map(attribute='stdout', default='-') | join}}] }}}}
""")
    with guestcheck.GuestSession(["sh", "-c"], become="") as session:
        checks = guestcheck.RoleRunner({"size": "large"}, role_dir=role).run(session)
    assert [(c.name, c.ok) for c in checks] == [("vars", True), ("echo", True)], checks


def test_role_runner_refuses_a_module_it_cannot_run(tmp_path: Path) -> None:
    from imagebuilder import guestcheck

    role = tmp_path / "validate"
    (role / "tasks").mkdir(parents=True)
    (role / "tasks/main.yml").write_text("- name: Install something\n  ansible.builtin.apt:\n    name: x\n")
    with guestcheck.GuestSession(["sh", "-c"], become="") as session:
        with pytest.raises(ValueError, match="module apt is not one"):
            guestcheck.RoleRunner({}, role_dir=role).run(session)


def test_grub_probe_answers_for_the_image_disk(tmp_path: Path) -> None:
    from imagebuilder import offline

    probe = tmp_path / "grub-probe"
    probe.write_text(offline.grub_probe_answers("0f5a6c1e-1111-4222-8333-444455556666"))
    probe.chmod(0o755)

    def ask(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(probe), *args], capture_output=True, text=True)

    assert ask("--target=device", "/").stdout == "/dev/vda1\n"
    assert ask("--device", "/dev/vda1", "--target=fs_uuid").stdout == "0f5a6c1e-1111-4222-8333-444455556666\n"
    assert ask("-t", "partmap", "--device", "/dev/vda1").stdout == "msdos\n"
    unknown = ask("--target=cryptodisk_uuid")
    assert unknown.returncode != 0 and "not known offline" in unknown.stderr


def test_qemu_builder_setting_stays_out_of_the_build_key(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from nullcells import null_cells

    keys = {builder: null_cells(tmp_path, {"qemu": {"builder": builder}}, minors=["1.31"], oses=["debian-12"])[0].build_key
            for builder in ("auto", "offline", "packer")}
    assert len(set(keys.values())) == 1
    other = null_cells(tmp_path, {"qemu": {"disk_size_mb": 10240}}, minors=["1.31"], oses=["debian-12"])[0]
    assert other.build_key != keys["auto"]
