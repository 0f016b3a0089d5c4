"""The Ansible roles, run for real into a Debian 12 root filesystem through the chroot connection.

Release files come from the fixture mirror on 127.0.0.1 (tests/mirror.py); Debian packages
are preinstalled in the cached rootfs, so the roles find them present and need no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, ImageRegistry, ReleaseMirror, copy_rootfs
from mirror import DEFAULT_FIXTURE_VERSIONS, build_fixture_apt_repo, build_fixture_release

ANSIBLE_DIR = REPO / "ansible"
BUILD_KEY = hashlib.sha256(b"test_roles build key").hexdigest()
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)


@dataclass
class PlayRun:
    rc: int
    output: str
    seconds: float

    @property
    def recap(self) -> dict[str, int]:
        matches = list(RECAP.finditer(self.output))
        assert matches, f"no PLAY RECAP in output:\n{self.output[-3000:]}"
        return {k: int(v) for k, v in matches[-1].groupdict().items() if k != "host"}


def cell_vars(mirror: ReleaseMirror, **overrides: object) -> dict[str, object]:
    """The contract variables of a qemu Debian 12 cell (docs/architecture.md), for a chroot."""
    minor = ".".join(mirror.versions["kubernetes"].split(".")[:2])
    values: dict[str, object] = {
        "imagebuilder_build_key": BUILD_KEY,
        "imagebuilder_cell_id": f"qemu-debian-12-k8s-{minor}",
        "imagebuilder_version": "0.1.0",
        "imagebuilder_git_commit": "unknown",
        "imagebuilder_os": "debian-12",
        "imagebuilder_os_family": "debian",
        "imagebuilder_cloud": "qemu",
        "imagebuilder_arch": "amd64",
        "imagebuilder_kubernetes_minor": minor,
        "imagebuilder_versions": dict(mirror.versions),
        "imagebuilder_pause_image": "registry.k8s.io/pause:3.10",
        "imagebuilder_downloads": mirror.downloads,
        # A chroot: nothing runs, so no modprobe/sysctl/daemon-reload and no runtime checks.
        "imagebuilder_apply_runtime": False,
        "validate_runtime_checks": False,
        # Offline: no Debian mirror to upgrade from (the package-method run below upgrades).
        "node_upgrade_packages": False,
        # The fixture containerd cannot pull: the package-method run below pre-pulls with Debian's.
        "imagebuilder_prepull_images": False,
    }
    values.update(overrides)
    return values


# Airgapped: every HTTP(S) request except to 127.0.0.1 goes to a proxy that refuses connections.
OFFLINE_ENV = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}


def run_playbook(root: Path, variables: dict[str, object], tmp: Path, playbook: str = "node.yml",
                 offline: bool = True) -> PlayRun:
    """ansible-playbook into the tree at ``root`` with the chroot connection."""
    vars_file = tmp / f"vars-{time.monotonic_ns()}.json"
    vars_file.write_text(json.dumps(variables))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PYTHONUNBUFFERED="1")
    if offline:
        env.update(OFFLINE_ENV)
    cmd = [
        "ansible-playbook", str(ANSIBLE_DIR / playbook),
        "-i", f"{root},", "-c", "community.general.chroot",
        "-e", "ansible_become=false", "-e", "ansible_python_interpreter=/usr/bin/python3",
        "-e", f"@{vars_file}",
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=ANSIBLE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL)
    return PlayRun(rc=proc.returncode, output=proc.stdout, seconds=time.monotonic() - started)


def in_chroot(root: Path, *argv: str) -> str:
    proc = subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True,
                          env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    assert proc.returncode == 0, f"{argv} failed in the chroot: {proc.stderr}"
    return proc.stdout + proc.stderr


def seed_build_leftovers(root: Path) -> None:
    """What a booted build VM carries and sysprep must remove (the rootfs already has host keys)."""
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "root/.bash_history").write_text("ls\n")
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    (root / "root/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA packer\n")
    (root / "var/lib/cloud/instances/i-123").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/cloud/instance").symlink_to("/var/lib/cloud/instances/i-123")
    (root / "var/log/cloud-init.log").write_text("cloud-init ran\n" * 100)
    (root / "var/log/syslog.1").write_text("old\n")
    with (root / "etc/fstab").open("a") as fstab:
        fstab.write("/swapfile none swap sw 0 0\n")


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (mode, size, mtime_ns) of every entry, symlinks not followed."""
    snap: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            snap[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return snap


@pytest.fixture(scope="module")
def built(debian_rootfs: Path, release_mirror: ReleaseMirror, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest):
    """The roles run once into a copy of the Debian 12 rootfs."""
    tmp = tmp_path_factory.mktemp("roles")
    root = copy_rootfs(debian_rootfs, tmp / "rootfs")
    seed_build_leftovers(root)
    run = run_playbook(root, cell_vars(release_mirror), tmp)
    line = f"full role run (ansible/node.yml into a Debian 12 chroot): {run.seconds:.1f}s"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"\n{line}", file=sys.stderr)
    else:
        print(line, file=sys.stderr)
    assert run.rc == 0, run.output[-6000:]
    return root, run, tmp


# ---------------------------------------------------------------- fixture mirror (fast)

def test_fixture_release_is_reproducible_and_pinned(tmp_path: Path) -> None:
    first = build_fixture_release(tmp_path / "a", DEFAULT_FIXTURE_VERSIONS)
    second = build_fixture_release(tmp_path / "b", DEFAULT_FIXTURE_VERSIONS)
    assert first == second
    for name, f in first.items():
        data = (tmp_path / "a" / f.component / f.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f.sha256, name
    assert first["kubeadm"].path == "v1.31.4/bin/linux/amd64/kubeadm"
    assert first["containerd"].path == "v1.7.24/containerd-1.7.24-linux-amd64.tar.gz"
    assert first["cni_plugins"].path == "v1.6.1/cni-plugins-linux-amd64-v1.6.1.tgz"
    kubeadm = tmp_path / "a" / "kubernetes" / first["kubeadm"].path
    assert subprocess.run([kubeadm, "version", "-o", "short"], capture_output=True, text=True).stdout == "v1.31.4\n"


# ---------------------------------------------------------------- the roles (slow)

@pytest.mark.slow
def test_first_run_installs_and_validates(built) -> None:
    _, run, _ = built
    assert run.recap["failed"] == 0
    assert run.recap["changed"] > 0
    assert "Image validation passed" in run.output


@pytest.mark.slow
def test_binaries_run_at_the_pinned_versions(built, release_mirror: ReleaseMirror) -> None:
    root, _, _ = built
    v = release_mirror.versions
    assert in_chroot(root, "kubeadm", "version", "-o", "short").strip() == f"v{v['kubernetes']}"
    assert in_chroot(root, "kubelet", "--version").strip() == f"Kubernetes v{v['kubernetes']}"
    assert f"v{v['containerd']}" in in_chroot(root, "containerd", "--version")
    assert f"runc version {v['runc']}" in in_chroot(root, "runc", "--version")
    assert in_chroot(root, "crictl", "--version").strip() == f"crictl version v{v['crictl']}"
    for binary in ("containerd", "containerd-shim-runc-v2", "ctr", "crictl", "kubeadm", "kubelet", "kubectl"):
        assert os.access(root / "usr/local/bin" / binary, os.X_OK), binary
    assert os.access(root / "usr/local/sbin/runc", os.X_OK)
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        assert os.access(root / "opt/cni/bin" / plugin, os.X_OK), plugin


@pytest.mark.slow
def test_units_enabled_and_configured(built) -> None:
    root, _, _ = built
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("containerd.service", "kubelet.service", "chrony.service", "auditd.service"):
        assert (wants / unit).is_symlink(), f"{unit} not enabled: {sorted(p.name for p in wants.iterdir())}"
    assert os.readlink(wants / "containerd.service").endswith("/containerd.service")
    containerd_unit = (root / "usr/local/lib/systemd/system/containerd.service").read_text()
    assert "ExecStart=/usr/local/bin/containerd" in containerd_unit
    assert "Delegate=yes" in containerd_unit
    kubelet_unit = (root / "etc/systemd/system/kubelet.service").read_text()
    assert "ExecStart=/usr/local/bin/kubelet" in kubelet_unit
    dropin = (root / "etc/systemd/system/kubelet.service.d/10-kubeadm.conf").read_text()
    assert "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env" in dropin
    assert "ExecStart=\nExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS" in dropin

    config = (root / "etc/containerd/config.toml").read_text()
    assert "version = 2" in config
    assert "SystemdCgroup = true" in config
    assert 'sandbox_image = "registry.k8s.io/pause:3.10"' in config
    assert 'bin_dir = "/opt/cni/bin"' in config
    assert "runtime-endpoint: unix:///run/containerd/containerd.sock" in (root / "etc/crictl.yaml").read_text()

    modules = (root / "etc/modules-load.d/kubernetes.conf").read_text().splitlines()
    assert [m for m in modules if not m.startswith("#")] == ["overlay", "br_netfilter"]
    sysctls = (root / "etc/sysctl.d/99-kubernetes.conf").read_text()
    for line in ("net.bridge.bridge-nf-call-iptables = 1", "net.ipv4.ip_forward = 1",
                 "net.bridge.bridge-nf-call-ip6tables = 1", "net.ipv6.conf.all.forwarding = 1"):
        assert line in sysctls
    assert "swap" not in "".join(l for l in (root / "etc/fstab").read_text().splitlines() if not l.startswith("#"))
    assert "datasource_list: [NoCloud, ConfigDrive, None]" in \
        (root / "etc/cloud/cloud.cfg.d/90-imagebuilder-datasource.cfg").read_text()


@pytest.mark.slow
def test_kubelet_kernel_settings_and_masked_upgrades(built) -> None:
    root, run, _ = built
    sysctls = (root / "etc/sysctl.d/99-kubernetes.conf").read_text()
    for line in ("vm.overcommit_memory = 1", "kernel.panic = 10", "kernel.panic_on_oops = 1"):
        assert line in sysctls
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service", "apt-daily-upgrade.service",
                 "unattended-upgrades.service"):
        assert os.readlink(root / "etc/systemd/system" / unit) == "/dev/null", unit
        assert in_chroot(root, "sh", "-c", f"systemctl is-enabled {unit} || true").strip() == "masked", unit
    # checked by the validate role too
    assert "[unit masked: apt-daily.timer]" not in run.output and "Image validation passed" in run.output


@pytest.mark.slow
def test_cloud_final_waits_for_containerd(built) -> None:
    root, _, _ = built
    dropin = root / "etc/systemd/system/cloud-final.service.d/10-imagebuilder-runtime.conf"
    text = dropin.read_text()
    assert "After=containerd.service" in text and "Wants=containerd.service" in text
    assert text.startswith("# Written by imagebuilder") and "\n[Unit]\n" in text


@pytest.mark.slow
def test_ntp_servers_from_dhcp(built) -> None:
    """qemu cells: chrony reads /run/chrony-dhcp; the networkd hook writes the servers a lease names."""
    root, _, _ = built
    conf = (root / "etc/chrony/conf.d/90-imagebuilder.conf").read_text()
    assert "sourcedir /run/chrony-dhcp" in conf.splitlines()
    assert "pool " not in conf
    leases = root / "run/systemd/netif/leases"
    leases.mkdir(parents=True, exist_ok=True)
    (leases / "2").write_text("ADDRESS=10.0.2.15\nNTP=10.0.2.3 192.0.2.123\n")
    hook = "/etc/networkd-dispatcher/routable.d/50-imagebuilder-chrony-dhcp"
    subprocess.run(["chroot", str(root), "env", "IFACE=ens3", "IFINDEX=2", hook], check=True)
    assert (root / "run/chrony-dhcp/ens3.sources").read_text() == "server 10.0.2.3 iburst\nserver 192.0.2.123 iburst\n"
    (leases / "2").write_text("ADDRESS=10.0.2.15\n")
    subprocess.run(["chroot", str(root), "env", "IFACE=ens3", "IFINDEX=2", hook], check=True)
    assert not (root / "run/chrony-dhcp/ens3.sources").exists()
    shutil.rmtree(root / "run/systemd/netif")


@pytest.mark.slow
def test_provenance_file(built, release_mirror: ReleaseMirror) -> None:
    root, _, _ = built
    fields = dict(
        line.split("=", 1) for line in (root / "etc/imagebuilder-release").read_text().splitlines()
        if line and not line.startswith("#")
    )
    v = release_mirror.versions
    assert fields["IMAGEBUILDER_BUILD_KEY"] == BUILD_KEY
    assert fields["KUBERNETES_VERSION"] == f"v{v['kubernetes']}"
    assert fields["CONTAINERD_VERSION"] == v["containerd"]
    assert fields["RUNC_VERSION"] == v["runc"]
    assert fields["CRICTL_VERSION"] == v["crictl"]
    assert fields["CNI_PLUGINS_VERSION"] == v["cni_plugins"]
    assert fields["PAUSE_IMAGE"] == "registry.k8s.io/pause:3.10"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["BUILD_DATE"]), fields["BUILD_DATE"]
    installed = {p.stem: p.read_text().strip() for p in (root / "var/lib/imagebuilder/artifacts").iterdir()}
    assert installed == {name: f.sha256 for name, f in release_mirror.files.items()}


@pytest.mark.slow
def test_sbom_of_the_built_tree(built, release_mirror: ReleaseMirror) -> None:
    """The SBOM the offline build writes, from the tree the roles built: the release files the roles
    installed at their pinned sums, and dpkg's packages as dpkg-query lists them."""
    from imagebuilder import sbom

    root, _, _ = built
    document = sbom.sbom_document(sbom.contents_of_tree(root), image_name="roles", build_key=BUILD_KEY, timestamp="20261204000000")
    v = release_mirror.versions
    hashes = {c["name"]: c["hashes"][0]["content"] for c in document["components"] if "hashes" in c}
    assert hashes == {sbom.RELEASE_NAMES.get(name, name): f.sha256 for name, f in release_mirror.files.items()}
    versions = sbom.package_versions(document)
    assert versions["kubelet"] == v["kubernetes"] and versions["containerd"] == v["containerd"]
    assert versions["runc"] == v["runc"] and versions["cni-plugins"] == v["cni_plugins"]
    listed = subprocess.run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", *sbom.DPKG_QUERY[1:]],
                            capture_output=True, text=True, check=True).stdout
    assert sbom.dpkg_versions(document) == sbom.parse_dpkg_query(listed)
    assert "chrony:amd64" in sbom.dpkg_versions(document)


@pytest.mark.slow
def test_image_is_generalised(built) -> None:
    root, _, _ = built
    assert (root / "etc/machine-id").read_text() == ""
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert not (root / "root/.ssh/authorized_keys").exists()
    assert not (root / "root/.bash_history").exists()
    assert not (root / "var/lib/cloud/instance").is_symlink()
    assert not (root / "var/lib/cloud/instances").exists()
    assert (root / "var/log/cloud-init.log").stat().st_size == 0
    assert not (root / "var/log/syslog.1").exists()
    assert not (root / "var/cache/imagebuilder/downloads").exists()
    assert [p.name for p in (root / "var/lib/apt/lists").iterdir() if p.is_file() and p.name != "lock"] == []


@pytest.mark.slow
def test_second_run_changes_nothing(built, release_mirror: ReleaseMirror) -> None:
    root, _, tmp = built
    before = (root / "etc/imagebuilder-release").read_text()
    run = run_playbook(root, cell_vars(release_mirror), tmp)
    assert run.rc == 0, run.output[-6000:]
    assert run.recap["changed"] == 0, [l for l in run.output.splitlines() if l.startswith("changed:")]
    assert (root / "etc/imagebuilder-release").read_text() == before


@pytest.mark.slow
def test_validate_names_the_failing_check(built, release_mirror: ReleaseMirror) -> None:
    root, _, tmp = built
    machine_id = root / "etc/machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    try:
        run = run_playbook(root, cell_vars(release_mirror), tmp, playbook="validate.yml")
    finally:
        machine_id.write_text("")
    assert run.rc != 0
    assert run.recap["failed"] == 1
    assert "[hygiene: empty machine-id] /etc/machine-id has 33 bytes" in run.output
    assert "1 of " in run.output


@pytest.mark.slow
def test_wrong_checksum_fails_before_installing(debian_rootfs: Path, release_mirror: ReleaseMirror, tmp_path: Path) -> None:
    root = copy_rootfs(debian_rootfs, tmp_path / "rootfs")
    before = tree_snapshot(root)
    downloads = release_mirror.downloads
    wrong = "0" * 64
    downloads["containerd"] = {**downloads["containerd"], "sha256": wrong}
    run = run_playbook(root, cell_vars(release_mirror, imagebuilder_downloads=downloads), tmp_path)
    assert run.rc != 0
    assert run.recap["failed"] == 1
    file_name = Path(release_mirror.files["containerd"].path).name
    actual = release_mirror.files["containerd"].sha256
    message = f"sha256 mismatch for containerd file {file_name}"
    assert message in run.output
    assert f"expected {wrong}" in run.output and f"actual {actual}" in run.output
    assert "TASK [imagebuilder : Verify the sha256 of every release file]" in run.output
    changed = {p for p, st in tree_snapshot(root).items() if before.get(p) != st}
    changed |= {p for p in before if not (root / p).exists() and not (root / p).is_symlink()}
    outside_staging = sorted(
        p for p in changed
        if not p.startswith(("var/cache/imagebuilder", "root/.ansible", "tmp/"))
        and p not in ("var/cache", "root", "tmp")
    )
    assert outside_staging == []
    staged = sorted(p.name for p in (root / "var/cache/imagebuilder/downloads").iterdir())
    assert file_name not in staged  # the bad file is deleted
    assert not (root / "usr/local/bin/containerd").exists()


@pytest.mark.slow
def test_ansible_lint_passes() -> None:
    if shutil.which("ansible-lint") is None:
        pytest.fail("ansible-lint is not installed (pip install ansible-lint)")
    proc = subprocess.run(["ansible-lint", "--offline", "node.yml", "validate.yml", "roles"], stdin=subprocess.DEVNULL,
                          cwd=ANSIBLE_DIR, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_playbooks_pass_syntax_check(tmp_path: Path) -> None:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_LOCAL_TEMP=str(tmp_path))
    for playbook in ("node.yml", "validate.yml"):
        proc = subprocess.run(["ansible-playbook", "--syntax-check", "-i", "localhost,", playbook], stdin=subprocess.DEVNULL,
                              cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def kubernetes_repo_url(release_mirror: ReleaseMirror) -> str:
    """A signed local apt repository shaped like pkgs.k8s.io, holding the fixture kubeadm/kubelet/kubectl."""
    return f"{release_mirror.base_url}/{build_fixture_apt_repo(release_mirror.root, release_mirror.versions)}"


def package_cell_vars(release_mirror: ReleaseMirror, image_registry: ImageRegistry, repo_url: str) -> dict[str, object]:
    """A cell with every package method: Debian's containerd (real, so it pulls), Kubernetes from a
    pkgs.k8s.io-shaped repository, and the registry mirror holding kubeadm's images."""
    return cell_vars(release_mirror, containerd_install_method="package", node_upgrade_packages=True,
                     kubernetes_install_method="package", kubernetes_package_repo=repo_url,
                     imagebuilder_prepull_images=True, imagebuilder_images=image_registry.ansible_images(),
                     imagebuilder_registry_plain_http=True)


@pytest.fixture(scope="module")
def built_package(debian_rootfs: Path, release_mirror: ReleaseMirror, image_registry: ImageRegistry,
                  tmp_path_factory: pytest.TempPathFactory):
    """The roles run once with the package methods, upgrading from and installing Debian's packages
    (Debian's mirror; apt ignores no_proxy and refreshes Debian's lists too, so not offline), Kubernetes
    from the local pkgs.k8s.io-shaped repository, and pre-pulling kubeadm's images from the local registry.
    One run for all of them: each run into a chroot costs a minute of the suite."""
    tmp = tmp_path_factory.mktemp("roles-package")
    root = copy_rootfs(debian_rootfs, tmp / "rootfs")
    (root / "etc/hostname").write_text("packer-build-vm\n")
    with (root / "etc/hosts").open("a") as hosts:
        hosts.write("127.0.1.1 packer-build-vm\n")
    variables = package_cell_vars(release_mirror, image_registry, kubernetes_repo_url(release_mirror))
    run = run_playbook(root, variables, tmp, offline=False)
    assert run.rc == 0, run.output[-6000:]
    return root, run, tmp, variables


def blob(root: Path, digest: str) -> Path:
    return root / "var/lib/containerd/io.containerd.content.v1.content/blobs/sha256" / digest.removeprefix("sha256:")


@pytest.mark.slow
def test_containerd_from_debian_packages(built_package) -> None:
    """containerd_install_method: package installs Debian's containerd, runc and CNI plugins (from Debian's mirror)."""
    root, run, _, _ = built_package
    assert "Image validation passed" in run.output
    assert os.access(root / "usr/bin/containerd", os.X_OK)
    assert not (root / "usr/local/bin/containerd").exists()
    assert os.readlink(root / "opt/cni/bin") == "/usr/lib/cni"
    assert os.access(root / "usr/lib/cni/bridge", os.X_OK)
    assert (root / "etc/systemd/system/multi-user.target.wants/containerd.service").is_symlink()
    config = (root / "etc/containerd/config.toml").read_text()
    assert "version = 2" in config and "SystemdCgroup = true" in config
    # containerd 1.x: registry hosts (mirrors, CAs) and drop-ins are read
    assert 'imports = ["/etc/containerd/conf.d/*.toml"]' in config
    assert '[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"' in config
    assert (root / "etc/containerd/certs.d").is_dir() and (root / "etc/containerd/conf.d").is_dir()
    assert "CONTAINERD_INSTALL_METHOD=package" in (root / "etc/imagebuilder-release").read_text()
    recorded = {p.stem for p in (root / "var/lib/imagebuilder/artifacts").iterdir()}
    assert recorded == {"crictl"}  # kubeadm, kubelet and kubectl came from their packages


@pytest.mark.slow
def test_base_upgraded_then_runtime_packages_held(built_package) -> None:
    root, run, _, _ = built_package
    task = run.output.split("TASK [node : Upgrade the base's packages (apt)]", 1)[1].split("TASK [", 1)[0]
    assert re.search(r"^(ok|changed): ", task, re.M), task
    selections = in_chroot(root, "dpkg", "--get-selections", "containerd", "runc", "containernetworking-plugins").split()
    assert dict(zip(selections[::2], selections[1::2])) == {
        "containerd": "hold", "runc": "hold", "containernetworking-plugins": "hold"}


@pytest.mark.slow
def test_images_pre_pulled_by_digest(built_package, image_registry: ImageRegistry) -> None:
    """Every pinned image is in containerd's k8s.io namespace under its registry.k8s.io name, with the pinned
    digest, and its manifest is in the content store (nothing to fetch at boot)."""
    root, run, _, _ = built_package
    for path, digest in image_registry.digests.items():
        manifest = blob(root, digest)
        assert manifest.is_file(), f"{path}: no manifest blob {digest}"
        assert "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest() == digest
    # listed by a containerd the test starts on the image's own store (ctr images ls)
    listed = in_chroot(root, "/usr/local/libexec/imagebuilder/containerd-images", "list")
    refs = dict(line.split(" ", 1) for line in listed.splitlines())
    for path, tag in image_registry.images.items():
        assert refs.get(f"registry.k8s.io/{path}:{tag}") == image_registry.digests[path], (path, listed)
        assert f"registry.k8s.io/{path}@{image_registry.digests[path]}" in refs
    assert not any(ref.startswith(image_registry.address) for ref in refs), "the mirror's names stay out"
    assert not list((root / "tmp").glob("imagebuilder-containerd.*")), "the temporary containerd cleaned up"


@pytest.mark.slow
def test_identity_reset_by_sysprep(built_package) -> None:
    root, _, _, _ = built_package
    assert (root / "etc/hostname").read_text() == ""
    hosts = (root / "etc/hosts").read_text()
    assert "packer-build-vm" not in hosts and "127.0.0.1 localhost" in hosts


@pytest.mark.slow
def test_second_package_run_changes_nothing(built_package, release_mirror: ReleaseMirror,
                                            image_registry: ImageRegistry) -> None:
    root, _, tmp, variables = built_package
    run = run_playbook(root, variables, tmp, offline=False)
    assert run.rc == 0, run.output[-6000:]
    assert run.recap["changed"] == 0, [l for l in run.output.splitlines() if l.startswith("changed:")]


@pytest.mark.slow
def test_validate_finds_a_missing_image_and_a_released_hold(built_package, release_mirror: ReleaseMirror,
                                                            image_registry: ImageRegistry) -> None:
    root, _, tmp, variables = built_package
    variables = dict(variables)
    images = list(variables["imagebuilder_images"])  # type: ignore[arg-type]
    images.append({**images[0], "name": "registry.k8s.io/not-pulled"})
    variables["imagebuilder_images"] = images
    in_chroot(root, "apt-mark", "unhold", "runc")
    try:
        run = run_playbook(root, variables, tmp, playbook="validate.yml", offline=False)
    finally:
        in_chroot(root, "apt-mark", "hold", "runc")
    assert run.rc != 0
    assert "[image present: registry.k8s.io/not-pulled:v1.31.4] registry.k8s.io/not-pulled:v1.31.4 is not in containerd" in run.output
    assert "[package held: runc] runc is not held" in run.output
    assert "2 of " in run.output


@pytest.mark.slow
def test_unpinned_image_is_refused(debian_rootfs: Path, release_mirror: ReleaseMirror, tmp_path: Path) -> None:
    root = copy_rootfs(debian_rootfs, tmp_path / "rootfs")
    images = [{"name": "registry.k8s.io/etcd", "tag": "3.5.16-0", "digest": None, "source": "registry.k8s.io/etcd"}]
    run = run_playbook(root, cell_vars(release_mirror, imagebuilder_prepull_images=True, imagebuilder_images=images),
                       tmp_path)
    assert run.rc != 0
    assert "These images have no pinned digest: registry.k8s.io/etcd." in run.output
    assert "imagebuilder_images_allow_unpinned: true" in run.output


@pytest.mark.slow
def test_kubernetes_from_a_pkgs_k8s_io_repository(built_package, release_mirror: ReleaseMirror) -> None:
    """kubernetes_install_method: package, against a signed local repository shaped like pkgs.k8s.io
    (its second run changing nothing is test_second_package_run_changes_nothing)."""
    root, run, _, variables = built_package
    repo_url = variables["kubernetes_package_repo"]
    assert "Image validation passed" in run.output
    k8s = release_mirror.versions["kubernetes"]
    assert in_chroot(root, "/usr/bin/kubeadm", "version", "-o", "short").strip() == f"v{k8s}"
    assert not (root / "usr/local/bin/kubeadm").exists()
    selections = in_chroot(root, "dpkg", "--get-selections", "kubeadm", "kubelet", "kubectl").split()
    assert dict(zip(selections[::2], selections[1::2])) == {"kubeadm": "hold", "kubelet": "hold", "kubectl": "hold"}
    status = in_chroot(root, "dpkg-query", "-W", "-f=${Package} ${Version}\\n", "kubelet").strip()
    assert status == f"kubelet {k8s}-1.1"
    # The package's unit (/lib or /usr/lib), not the binary method's /etc/systemd/system one.
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/kubelet.service").endswith(
        "lib/systemd/system/kubelet.service")
    assert not (root / "etc/systemd/system/kubelet.service").exists()
    sources = (root / "etc/apt/sources.list.d/kubernetes.sources").read_text()
    assert f"URIs: {repo_url}/deb/" in sources
    assert (root / "etc/apt/keyrings/kubernetes-apt-keyring.asc").read_bytes().startswith(b"-----BEGIN PGP PUBLIC KEY")


def providers_only(root: Path, variables: dict[str, object], tmp: Path) -> PlayRun:
    """Only the providers role (its packages install as the qemu cell's do, tested above)."""
    playbook = tmp / "providers.yml"
    playbook.write_text("- hosts: all\n  roles: [providers]\n")
    vars_file = tmp / "providers-vars.json"
    vars_file.write_text(json.dumps(variables))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"),
               ANSIBLE_NOCOLOR="1", **OFFLINE_ENV)
    started = time.monotonic()
    proc = subprocess.run(["ansible-playbook", str(playbook), "-i", f"{root},", "-c", "community.general.chroot",
                           "-e", "ansible_become=false", "-e", "ansible_python_interpreter=/usr/bin/python3",
                           "-e", f"@{vars_file}"], env=env, cwd=ANSIBLE_DIR, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    return PlayRun(rc=proc.returncode, output=proc.stdout, seconds=time.monotonic() - started)


@pytest.mark.slow
def test_azure_provider_items(debian_rootfs: Path, release_mirror: ReleaseMirror, tmp_path: Path) -> None:
    """Azure: wireserver blocked for non-root by a boot unit, no network config from cloud-init, the PHC clock."""
    root = copy_rootfs(debian_rootfs, tmp_path / "rootfs")
    variables = cell_vars(release_mirror, imagebuilder_cloud="azure",
                          imagebuilder_agent_packages={"debian": {"azure": []}},
                          imagebuilder_agent_services={"debian": {}})
    run = providers_only(root, variables, tmp_path)
    assert run.rc == 0, run.output[-4000:]
    unit = (root / "etc/systemd/system/imagebuilder-azure-wireserver.service").read_text()
    assert "iptables -w -A FORWARD -d 168.63.129.16/32 -p tcp --dport 80 -j DROP" in unit
    assert "iptables -w -A OUTPUT -d 168.63.129.16/32 -p tcp -m owner --uid-owner 0 -j ACCEPT" in unit
    assert "Before=network-pre.target" in unit
    assert (root / "etc/systemd/system/multi-user.target.wants/imagebuilder-azure-wireserver.service").is_symlink()
    datasource = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/90-imagebuilder-datasource.cfg").read_text())
    assert datasource == {"datasource_list": ["Azure", "None"],
                          "datasource": {"Azure": {"apply_network_config": False}}}
    chrony = (root / "etc/chrony/conf.d/90-imagebuilder.conf").read_text().splitlines()
    assert "refclock PHC /dev/ptp0 poll 3 dpoll -2 offset 0" in chrony and "makestep 1.0 -1" in chrony
    assert "sourcedir /run/chrony-dhcp" not in chrony  # azure: time from the host, not DHCP
    assert not (root / "etc/networkd-dispatcher/routable.d/50-imagebuilder-chrony-dhcp").exists()


def test_provider_data_per_os() -> None:
    """Ubuntu names the Azure agent walinuxagent, Debian waagent; AWS gets the CLI (a snap on Ubuntu, with SSM)."""
    data = yaml.safe_load((ANSIBLE_DIR / "roles/providers/defaults/main.yml").read_text())
    contract = yaml.safe_load((ANSIBLE_DIR / "roles/imagebuilder/defaults/main.yml").read_text())
    assert contract["imagebuilder_agent_packages"]["ubuntu"]["azure"] == ["walinuxagent"]
    assert contract["imagebuilder_agent_packages"]["debian"]["azure"] == ["waagent"]
    assert "awscli" in contract["imagebuilder_agent_packages"]["debian"]["aws"]
    assert data["providers_snaps"]["ubuntu"]["aws"] == ["amazon-ssm-agent", "aws-cli"]
    override = data["providers_datasource_overrides"][0]
    assert (override["distribution"], override["min_version"], override["datasources"]) == ("ubuntu", "22.04", ["Ec2"])


def _check_mode_on_this_host(variables: dict[str, object], tmp: Path) -> subprocess.CompletedProcess[str]:
    """node.yml in check mode against this machine: the contract checks fail before any task acts."""
    vars_file = tmp / "vars.json"
    vars_file.write_text(json.dumps(variables))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp), ANSIBLE_REMOTE_TEMP=str(tmp / "remote"))
    return subprocess.run(
        ["ansible-playbook", "node.yml", "--check", "-i", "localhost,", "-c", "local",
         "-e", "ansible_become=false", "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"@{vars_file}"],
        cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )


def test_missing_cell_variables_fail_clearly(tmp_path: Path) -> None:
    proc = _check_mode_on_this_host({}, tmp_path)
    assert proc.returncode != 0
    assert "The imagebuilder variables are missing" in proc.stdout + proc.stderr
    assert "imagebuilder vars CELL_ID" in proc.stdout + proc.stderr


def test_family_mismatch_fails_clearly(tmp_path: Path, release_mirror: ReleaseMirror) -> None:
    proc = _check_mode_on_this_host(cell_vars(release_mirror, imagebuilder_os_family="redhat"), tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "(cell family redhat)" in out
    assert "Check the operating system family" in out
