"""A real image registry for tests: Debian's docker-registry on 127.0.0.1, holding small images built here.

API (the roles, versions-update and end-to-end tests share it):

- ``serve_registry(root, delete=True) -> ContextManager[str]``: docker-registry (distribution 2.x) with its
  own config and storage under ``root``, on a free port of 127.0.0.1; yields its address ``127.0.0.1:PORT``.
  ``delete=False``: deletion disabled (``storage.delete.enabled: false``), a DELETE answers 405 UNSUPPORTED.
  ``login=(user, password)``: every request needs them (htpasswd auth, Basic), as a private registry does.
  ``auth_config``: another ``auth:`` section (a token service's, as Harbor, GHCR and Docker Hub ask for).
- ``push_images(address, images, work) -> dict[str, str]``: for each ``{path: tag}`` builds a tiny image
  with buildah (vfs storage under ``work``, ``FROM scratch`` plus one file naming it, so every image has
  its own digest) and pushes it as ``address/path:tag``; returns ``{path: "sha256:..."}``, the manifest
  digests the registry serves.
- ``kubeadm_images(kubernetes, pause="3.10") -> dict[str, str]``: the ``{path: tag}`` of what kubeadm
  pulls, with fixture etcd and coredns tags.
- ``images_lock(images, digests) -> dict``: the ``images:`` entry of a versions.lock.yaml minor.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FIXTURE_ETCD_TAG = "3.5.16-0"
FIXTURE_COREDNS_TAG = "v1.11.3"
_CONFIG = """version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: {delete}
http:
  addr: 127.0.0.1:{port}
"""
_HTPASSWD = """auth:
  htpasswd:
    realm: imagebuilder-test
    path: {path}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_registry(root: Path, timeout: float = 30.0, delete: bool = True,
                   login: tuple[str, str] | None = None, auth_config: str = "") -> Iterator[str]:
    """docker-registry on 127.0.0.1 with storage under ``root``; yields ``127.0.0.1:PORT``."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = root / "config.yml"
    text = _CONFIG.format(storage=root / "storage", port=port, delete=str(delete).lower())
    if login is not None:
        import bcrypt

        (root / "htpasswd").write_text(f"{login[0]}:{bcrypt.hashpw(login[1].encode(), bcrypt.gensalt(4)).decode()}\n")
        text += _HTPASSWD.format(path=root / "htpasswd")
    config.write_text(text + auth_config)
    log = (root / "registry.log").open("w")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=2):
                    break
            except urllib.error.HTTPError as error:
                if error.code == 401:  # up, and asking for a login
                    break
                raise
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log').read_text()[-800:]}")
                time.sleep(0.1)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _buildah(work: Path, *args: str) -> str:
    cmd = ["buildah", "--storage-driver", "vfs", "--root", str(work / "storage"), "--runroot", str(work / "run"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr[-800:]}")
    return proc.stdout.strip()


def push_images(address: str, images: dict[str, str], work: Path) -> dict[str, str]:
    """Build and push one tiny image per ``{path: tag}``; returns ``{path: manifest digest}``."""
    work.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}
    for path, tag in images.items():
        content = work / "content" / path.replace("/", "_") / "IMAGE"
        content.parent.mkdir(parents=True, exist_ok=True)
        content.write_text(f"imagebuilder test fixture image {path}:{tag}\n")
        container = _buildah(work, "from", "--quiet", "scratch")
        _buildah(work, "copy", "--quiet", container, str(content), "/IMAGE")
        _buildah(work, "config", "--os", "linux", "--arch", "amd64", "--label", f"fixture={path}:{tag}", container)
        local = f"localhost/fixture/{path}:{tag}"
        _buildah(work, "commit", "--quiet", "--rm", container, local)
        digest_file = work / "digest"
        _buildah(work, "push", "--quiet", "--tls-verify=false", "--digestfile", str(digest_file), local,
                 f"docker://{address}/{path}:{tag}")
        digests[path] = digest_file.read_text().strip()
    return digests


def kubeadm_images(kubernetes: str, pause: str = "3.10") -> dict[str, str]:
    """``{path: tag}`` of the images kubeadm pulls for ``kubernetes`` (fixture etcd and coredns tags)."""
    tags = {name: f"v{kubernetes}" for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                                "kube-proxy")}
    return {**tags, "pause": pause, "etcd": FIXTURE_ETCD_TAG, "coredns/coredns": FIXTURE_COREDNS_TAG}


def images_lock(images: dict[str, str], digests: dict[str, str]) -> dict[str, dict[str, str]]:
    """The ``images:`` mapping of a versions.lock.yaml minor."""
    return {path: {"tag": tag, "digest": digests[path]} for path, tag in images.items()}
