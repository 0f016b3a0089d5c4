"""Real services for the publish tests, started by the tests themselves on 127.0.0.1.

- ``moto_server()``: moto's server (every AWS service on one port), started as
  ``moto_server -H 127.0.0.1 -p PORT`` with the vendors' stock AMIs that the cells' base image
  filters select (``vendor_amis``) instead of moto's own; yields its URL.
  ``reset_moto(url)`` empties it between tests.
- ``glance_server(root)``: OpenStack Glance (pip package ``glance``), its real WSGI app
  ``glance.wsgi.api:application`` under gunicorn, with sqlite, the file store and no
  authentication (the paste pipeline without keystone, legacy policy defaults so the
  unauthenticated admin context may act). ``glance-manage db_sync`` first. Yields its URL.
  ``clear_glance(url)`` deletes every image between tests.

Pytest fixtures (import them into a test module to use them): ``moto_url`` (session),
``aws_env`` (moto emptied, AWS_* pointing at it, no real credentials reachable),
``glance_url`` (session), ``openstack_env`` (Glance emptied, OS_* pointing at it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imagebuilder.metadata import ImageMetadata

START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT) -> float:
    """Seconds until `url` answers any HTTP status; fails with the log's tail if the process dies."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return time.monotonic() - started
        except urllib.error.HTTPError:
            return time.monotonic() - started
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url}: no answer after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tool(name: str, module: str) -> list[str]:
    """The console script next to this Python, else `python -m module`."""
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


# -- moto ------------------------------------------------------------------------------------


VENDOR_AMI_DATE = "20250101"


def vendor_amis() -> list[dict[str, object]]:
    """The stock AMIs the OS vendors publish, one per OS and arch, as every AWS account sees them
    (moto's MOTO_AMIS_PATH format): what the cells' base image filters select."""
    from imagebuilder.osinfo import OPERATING_SYSTEMS

    amis = []
    references = [(info, arch, reference) for info in OPERATING_SYSTEMS.values()
                  for arch, reference in info.images.get("aws", {}).items()]
    for number, (info, arch, reference) in enumerate(references):
        amis.append({
            "ami_id": f"ami-0{number:016x}", "name": reference["name_filter"].replace("*", VENDOR_AMI_DATE),
            "description": f"{info.id} {arch} stock image", "owner_id": reference["owner"], "public": True,
            "virtualization_type": "hvm", "architecture": "x86_64" if arch == "amd64" else "arm64",
            "state": "available", "platform": None, "image_type": "machine", "hypervisor": "xen",
            "root_device_name": "/dev/sda1", "root_device_type": "ebs", "sriov": "simple",
            "creation_date": "2025-01-01T00:00:00.000Z"})
    return amis


@contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """moto with the vendors' stock AMIs (vendor_amis) and none of moto's own."""
    port = free_port()
    log = log_dir / "moto.log"
    amis = log_dir / "vendor-amis.json"
    amis.write_text(json.dumps(vendor_amis()))
    env = {**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "MOTO_AMIS_PATH": str(amis)}
    with log.open("wb") as out:
        process = subprocess.Popen([*_tool("moto_server", "moto.server"), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/moto-api/", process, log)
        yield url
    finally:
        _stop(process)


def reset_moto(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).close()


AWS_VARIABLES_TO_DROP = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                         "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                         "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """An empty moto behind AWS_ENDPOINT_URL, fake credentials, no shared config files."""
    reset_moto(moto_url)
    for name in AWS_VARIABLES_TO_DROP:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_url


# -- Glance ----------------------------------------------------------------------------------

# The API pipeline without keystone: the unauthenticated context is an admin without roles.
GLANCE_PASTE_INI = """\
[composite:glance-api]
paste.composite_factory = glance.api:root_app_factory
/: api

[pipeline:api]
pipeline = versionnegotiation unauthenticated-context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:unauthenticated-context]
paste.filter_factory = glance.api.middleware.context:UnauthenticatedContextMiddleware.factory
"""

GLANCE_API_CONF = """\
[DEFAULT]
worker_self_reference_url = {url}
node_staging_uri = file://{root}/staging
enabled_import_methods = []
log_file = {root}/glance-api.log

[database]
connection = sqlite:///{root}/glance.sqlite

[paste_deploy]
config_file = {root}/glance-api-paste.ini

[glance_store]
stores = file
default_store = file
filesystem_store_datadir = {root}/images

[oslo_concurrency]
lock_path = {root}/locks

[oslo_policy]
# Without keystone no request carries roles; the legacy rules let the admin context act.
enforce_new_defaults = False
enforce_scope = False
"""


def write_glance_config(root: Path, url: str) -> None:
    for name in ("images", "staging", "locks"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "glance-api-paste.ini").write_text(GLANCE_PASTE_INI)
    (root / "glance-api.conf").write_text(GLANCE_API_CONF.format(root=root, url=url))


@contextmanager
def glance_server(root: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    write_glance_config(root, url)
    log = root / "gunicorn.log"
    env = {**os.environ, "OS_GLANCE_CONFIG_DIR": str(root)}
    subprocess.run([*_tool("glance-manage", "glance.cmd.manage"), "--config-file", str(root / "glance-api.conf"),
                    "db_sync"], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*_tool("gunicorn", "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
             "--timeout", "120", "glance.wsgi.api:application"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        _wait_for(f"{url}/v2/images", process, log)
        yield url
    finally:
        _stop(process)


def clear_glance(url: str) -> None:
    with urllib.request.urlopen(f"{url}/v2/images?limit=1000", timeout=10) as answer:
        images = json.load(answer)["images"]
    for image in images:
        if image.get("protected"):
            body = json.dumps([{"op": "replace", "path": "/protected", "value": False}]).encode()
            request = urllib.request.Request(f"{url}/v2/images/{image['id']}", data=body, method="PATCH", headers={
                "Content-Type": "application/openstack-images-v2.1-json-patch"})
            urllib.request.urlopen(request, timeout=10).close()
        urllib.request.urlopen(urllib.request.Request(f"{url}/v2/images/{image['id']}", method="DELETE"),
                               timeout=10).close()


OS_VARIABLES_TO_DROP = ("OS_CLOUD", "OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME",
                        "OS_PROJECT_ID", "OS_TOKEN", "OS_APPLICATION_CREDENTIAL_ID",
                        "OS_APPLICATION_CREDENTIAL_SECRET", "OS_REGION_NAME", "OS_CLIENT_CONFIG_FILE")


@pytest.fixture(scope="session")
def glance_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with glance_server(tmp_path_factory.mktemp("glance")) as url:
        yield url


@pytest.fixture
def openstack_env(glance_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """An empty Glance; openstacksdk reaches it with auth_type none and an image endpoint override."""
    clear_glance(glance_url)
    for name in OS_VARIABLES_TO_DROP:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "no-clouds.yaml"))
    monkeypatch.setenv("OS_AUTH_TYPE", "none")
    monkeypatch.setenv("OS_IMAGE_ENDPOINT_OVERRIDE", glance_url + "/")
    return glance_url


# -- sample build output ---------------------------------------------------------------------


def sample_metadata(**changes: str) -> ImageMetadata:
    """Metadata as a build of debian-12 / Kubernetes 1.31.4 writes it; any field can be changed."""
    values = {"os": "debian-12", "os_version": "12", "kubernetes_version": "v1.31.4", "kubernetes_minor": "1.31",
              "arch": "amd64", "build_key": "a" * 64, "cell": "qemu-debian-12-k8s-1.31", "version": "0.1.0",
              "git_commit": "0123456789abcdef", "build_timestamp": "20251125100000"}
    values.update(changes)
    return ImageMetadata(**values)


def qcow2_file(path: Path, size: str = "16M") -> Path:
    """A real (empty) qcow2 image, as Glance checks the format of what it stores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path
