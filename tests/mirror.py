"""Fixture release mirror for tests: small, real, runnable release files served on 127.0.0.1.

API (kept small; the roles, qemu, sysext and versions-update tests share it):

- ``build_fixture_release(root, versions, arch="amd64") -> dict[str, FixtureFile]``
  writes one file per download name (kubeadm, kubelet, kubectl, containerd, runc, crictl,
  cni_plugins) under ``root/<component>/<path>``, where ``<path>`` is the upstream path
  under that component's mirror base (docs/architecture.md), plus the upstream checksum
  files and ``kubernetes/stable-<minor>.txt``. Binaries are POSIX shell scripts that print
  versions as the real ones do (``kubeadm version -o short`` prints ``v1.31.4``; a CNI
  plugin run without CNI_COMMAND prints ``CNI bridge plugin v1.6.1`` on stderr).
  Archives are byte-for-byte reproducible, so their sums are stable between runs.
- ``publish_release(root, versions, newest=False)``: ``build_fixture_release`` for every arch
  imagebuilder pins (one upstream release); with ``newest`` it is also what
  ``kubernetes/stable.txt`` names. Calling it again for a later patch of a minor publishes
  that patch beside the older one, as upstream does.
- ``serve_directory(root)``: context manager serving ``root`` over HTTP on 127.0.0.1 on a
  free port, in a thread; yields the base URL (no trailing slash).
- ``mirrors_for(base_url)``: the ``mirrors:`` mapping (component -> base URL) for that server.
- ``downloads_for_fixture(files, base_url)``: the ``imagebuilder_downloads`` mapping
  (name -> {url, sha256}) that the Ansible roles consume.
- ``build_fixture_apt_repo(root, versions, arch="amd64") -> str``: a signed flat apt
  repository shaped like pkgs.k8s.io (``core:/stable:/v1.31/deb/`` with ``InRelease``,
  ``Packages`` and ``Release.key``) holding kubeadm, kubelet and kubectl .debs built from
  the same fixture binaries; returns its path under ``root`` (the repository base for
  ``kubernetes_package_repo`` is ``base_url + "/" + path``). Needs dpkg-deb and gpg.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from imagebuilder.versions import ARCHES

DEFAULT_FIXTURE_VERSIONS: dict[str, str] = {
    "kubernetes": "1.31.4",
    "containerd": "1.7.24",
    "runc": "1.2.3",
    "crictl": "1.31.1",
    "cni_plugins": "1.6.1",
}
COMPONENT_OF: dict[str, str] = {
    "kubeadm": "kubernetes",
    "kubelet": "kubernetes",
    "kubectl": "kubernetes",
    "containerd": "containerd",
    "runc": "runc",
    "crictl": "crictl",
    "cni_plugins": "cni_plugins",
}
CONTAINERD_BINARIES: tuple[str, ...] = ("containerd", "containerd-shim-runc-v2", "ctr", "containerd-stress")
CNI_PLUGINS: tuple[str, ...] = (
    "bandwidth", "bridge", "dhcp", "firewall", "host-device", "host-local",
    "ipvlan", "loopback", "macvlan", "portmap", "ptp", "tuning", "vlan",
)


@dataclass(frozen=True)
class FixtureFile:
    component: str  # key of imagebuilder.versions.UPSTREAM_MIRRORS
    path: str  # path under the component's mirror base, as in versions.lock.yaml
    sha256: str

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.component}/{self.path}"


def _script(body: str) -> bytes:
    return f"#!/bin/sh\n# imagebuilder test fixture, not the real program\n{body}\n".encode()


# Run with no arguments, as its systemd unit (Type=notify) starts it, a daemon fixture
# tells systemd it is ready from its main process and then stays up.
_NOTIFY_DAEMON = (
    '''  "") exec python3 -c 'import os, socket, time
address = os.environ.get("NOTIFY_SOCKET", "")
if address:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect("\\0" + address[1:] if address.startswith("@") else address)
    sock.send(b"READY=1")
while True:
    time.sleep(3600)' ;;'''
)


def _version_script(name: str, cases: dict[str, str], daemon: bool = False) -> bytes:
    lines = ['case "$*" in']
    if daemon:
        lines.append(_NOTIFY_DAEMON)
    for pattern, output in cases.items():
        text = output.replace("'", "'\\''")
        lines.append(f"  {pattern}) printf '%s\\n' '{text}' ;;")
    lines.append(f'  *) echo "{name} (fixture): unsupported arguments: $*" >&2; exit 1 ;;')
    lines.append("esac")
    return _script("\n".join(lines))


def kubernetes_binary(name: str, version: str) -> bytes:
    v = f"v{version}"
    major, minor = version.split(".")[:2]
    info = f'&version.Info{{Major:"{major}", Minor:"{minor}", GitVersion:"{v}", GitTreeState:"clean"}}'
    cases = {
        "kubeadm": {
            '"version -o short"|"version --output=short"|"version -oshort"': v,
            "version*": f"kubeadm version: {info}",
        },
        "kubelet": {'"--version"|"version"': f"Kubernetes {v}"},
        "kubectl": {"version*--client*": f"Client Version: {v}\nKustomize Version: v5.4.2"},
    }[name]
    return _version_script(name, cases)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    """A reproducible .tar.gz: fixed mtimes and owners, members in the given order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if data.startswith(b"#!") else 0o644
            info.mtime = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _release_files(versions: dict[str, str], arch: str) -> dict[str, tuple[str, bytes]]:
    k8s, ctd, runc, crictl, cni = (
        versions["kubernetes"], versions["containerd"], versions["runc"], versions["crictl"], versions["cni_plugins"],
    )
    files: dict[str, tuple[str, bytes]] = {}
    for name in ("kubeadm", "kubelet", "kubectl"):
        files[name] = (f"v{k8s}/bin/linux/{arch}/{name}", kubernetes_binary(name, k8s))
    ctd_out = f"github.com/containerd/containerd v{ctd} fixture{ctd.replace('.', '')}"
    containerd_members = {
        "bin/containerd": _version_script("containerd", {'"--version"|"-v"': f"containerd {ctd_out}"},
                                          daemon=True),
        "bin/containerd-shim-runc-v2": _version_script(
            "containerd-shim-runc-v2", {'"-v"|"--version"': f"containerd-shim-runc-v2:\n  Version:  v{ctd}"}
        ),
        "bin/ctr": _version_script("ctr", {'"--version"|"-v"': f"ctr {ctd_out}"}),
        "bin/containerd-stress": _version_script("containerd-stress", {'"--version"|"-v"': f"containerd-stress v{ctd}"}),
    }
    files["containerd"] = (f"v{ctd}/containerd-{ctd}-linux-{arch}.tar.gz", _tar_gz(containerd_members))
    files["runc"] = (
        f"v{runc}/runc.{arch}",
        _version_script("runc", {'"--version"|"-v"|"version"': f"runc version {runc}\ncommit: v{runc}-0-gfixture\nspec: 1.2.0"}),
    )
    files["crictl"] = (
        f"v{crictl}/crictl-v{crictl}-linux-{arch}.tar.gz",
        _tar_gz({"crictl": _version_script("crictl", {'"--version"|"-v"': f"crictl version v{crictl}"})}),
    )
    cni_members = {
        f"./{plugin}": _script(
            f'if [ "$CNI_COMMAND" = VERSION ]; then echo \'{{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}}\'; '
            f"else echo 'CNI {plugin} plugin v{cni}' >&2; echo 'CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0' >&2; fi"
        )
        for plugin in CNI_PLUGINS
    }
    cni_members["./LICENSE"] = b"Apache License 2.0 (fixture)\n"
    files["cni_plugins"] = (f"v{cni}/cni-plugins-linux-{arch}-v{cni}.tgz", _tar_gz(cni_members))
    return files


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o755 if data.startswith(b"#!") else 0o644)


def build_fixture_release(root: Path, versions: dict[str, str], arch: str = "amd64") -> dict[str, FixtureFile]:
    """Write the fixture release files for ``versions`` (component -> version, no 'v') under ``root``.

    Returns download name -> FixtureFile. Also writes the upstream-style checksum files
    (kubernetes ``<file>.sha256``, containerd ``.sha256sum``, runc ``runc.sha256sum``,
    crictl and CNI ``.sha256``) and ``kubernetes/stable-<minor>.txt``.
    """
    result: dict[str, FixtureFile] = {}
    for name, (rel, data) in _release_files(versions, arch).items():
        component = COMPONENT_OF[name]
        digest = hashlib.sha256(data).hexdigest()
        target = root / component / rel
        _write(target, data)
        if component == "kubernetes" or name == "crictl":
            _write(target.with_name(target.name + ".sha256"), f"{digest}\n".encode())
        elif name == "containerd":
            _write(target.with_name(target.name + ".sha256sum"), f"{digest}  {target.name}\n".encode())
        elif name == "cni_plugins":
            _write(target.with_name(target.name + ".sha256"), f"{digest}  {target.name}\n".encode())
        elif name == "runc":  # one sum file per release, a line per arch: keep the other arches' lines
            sums = target.with_name("runc.sha256sum")
            kept = [line for line in (sums.read_text().splitlines(keepends=True) if sums.exists() else [])
                    if line.split()[-1] != target.name]
            _write(sums, "".join([*kept, f"{digest}  {target.name}\n"]).encode())
        result[name] = FixtureFile(component=component, path=rel, sha256=digest)
    minor = ".".join(versions["kubernetes"].split(".")[:2])
    _write(root / "kubernetes" / f"stable-{minor}.txt", f"v{versions['kubernetes']}\n".encode())
    return result


def publish_release(root: Path, versions: dict[str, str], newest: bool = False) -> dict[str, dict[str, FixtureFile]]:
    """One release for every arch imagebuilder pins: arch -> download name -> FixtureFile."""
    files = {arch: build_fixture_release(root, versions, arch) for arch in ARCHES}
    if newest:
        _write(root / "kubernetes" / "stable.txt", f"v{versions['kubernetes']}\n".encode())
    return files


KUBELET_UNIT = """[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
KUBEADM_DROPIN = """[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""


def _build_deb(work: Path, name: str, version: str, arch: str, files: dict[str, bytes]) -> Path:
    tree = work / f"{name}-tree"
    for rel, data in files.items():
        _write(tree / rel, data)
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: imagebuilder tests <tests@invalid>\nSection: admin\nPriority: optional\n"
        f"Description: {name} (imagebuilder test fixture)\n"
    )
    out = work / f"{name}_{version}_{arch}.deb"
    env = dict(os.environ, SOURCE_DATE_EPOCH="0")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(out)],
                   check=True, capture_output=True, env=env)
    return out


def build_fixture_apt_repo(root: Path, versions: dict[str, str], arch: str = "amd64") -> str:
    """A signed flat apt repository shaped like pkgs.k8s.io for the Kubernetes minor of ``versions``."""
    k8s = versions["kubernetes"]
    minor = ".".join(k8s.split(".")[:2])
    rel = f"pkgs/core:/stable:/v{minor}"
    repo = root / rel / "deb"
    repo.mkdir(parents=True, exist_ok=True)
    deb_version = f"{k8s}-1.1"
    stanzas: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        contents = {
            "kubeadm": {"usr/bin/kubeadm": kubernetes_binary("kubeadm", k8s),
                        "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": KUBEADM_DROPIN.encode()},
            "kubelet": {"usr/bin/kubelet": kubernetes_binary("kubelet", k8s),
                        "usr/lib/systemd/system/kubelet.service": KUBELET_UNIT.encode()},
            "kubectl": {"usr/bin/kubectl": kubernetes_binary("kubectl", k8s)},
        }
        for name, files in contents.items():
            deb = _build_deb(work, name, deb_version, arch, files)
            data = deb.read_bytes()
            _write(repo / arch / deb.name, data)
            stanzas.append(
                f"Package: {name}\nVersion: {deb_version}\nArchitecture: {arch}\n"
                f"Maintainer: imagebuilder tests <tests@invalid>\nFilename: {arch}/{deb.name}\n"
                f"Size: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
                f"Description: {name} (imagebuilder test fixture)\n"
            )
        packages = "\n".join(stanzas).encode()
        _write(repo / "Packages", packages)
        _write(repo / "Packages.gz", gzip.compress(packages, mtime=0))
        sums = "".join(
            f" {hashlib.sha256((repo / f).read_bytes()).hexdigest()} {(repo / f).stat().st_size} {f}\n"
            for f in ("Packages", "Packages.gz")
        )
        release = f"Origin: imagebuilder-tests\nLabel: kubernetes\nArchitectures: {arch}\nDate: Thu, 01 Jan 1970 00:00:00 UTC\nSHA256:\n{sums}"
        _write(repo / "Release", release.encode())
        gnupg = work / "gnupg"
        gnupg.mkdir(mode=0o700)
        gpg = ["gpg", "--batch", "--homedir", str(gnupg), "--pinentry-mode", "loopback", "--passphrase", ""]
        subprocess.run([*gpg, "--quick-gen-key", "imagebuilder tests <tests@invalid>", "ed25519", "sign", "never"],
                       check=True, capture_output=True)
        key = subprocess.run([*gpg, "--armor", "--export"], check=True, capture_output=True).stdout
        _write(repo / "Release.key", key)
        for path in (repo / "InRelease", repo / "Release.gpg"):
            path.unlink(missing_ok=True)
        subprocess.run([*gpg, "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release")],
                       check=True, capture_output=True)
        subprocess.run([*gpg, "--armor", "--detach-sign", "-o", str(repo / "Release.gpg"), str(repo / "Release")],
                       check=True, capture_output=True)
    return rel


def mirrors_for(base_url: str) -> dict[str, str]:
    """The ``mirrors:`` mapping that points every component at the fixture server."""
    return {component: f"{base_url.rstrip('/')}/{component}" for component in sorted(set(COMPONENT_OF.values()))}


def downloads_for_fixture(files: dict[str, FixtureFile], base_url: str) -> dict[str, dict[str, str]]:
    """The ``imagebuilder_downloads`` variable for ``files`` served at ``base_url``."""
    return {name: {"url": f.url(base_url), "sha256": f.sha256} for name, f in files.items()}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 on a free port in a daemon thread; yield the base URL."""
    handler = partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name=f"mirror:{root}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def fixture_lock(files: dict[str, FixtureFile], versions: dict[str, str], arch: str = "amd64",
                 images: dict[str, dict[str, str]] | None = None) -> dict:
    """A versions.lock.yaml document pinning the fixture files (one minor, one arch), and ``images``
    (the ``images:`` entry, e.g. ``ImageRegistry.lock`` from conftest) when given."""
    components: dict[str, dict] = {}
    for name, fixture in files.items():
        component = components.setdefault(fixture.component, {"version": versions[fixture.component], "files": {}})
        component["files"][name] = {"path": fixture.path, "sha256": {arch: fixture.sha256}}
    minor = ".".join(versions["kubernetes"].split(".")[:2])
    pins: dict = {"pause": "3.10", "components": components}
    if images:
        pins["images"] = images
    return {"schema": 1, "minors": {minor: pins}}
