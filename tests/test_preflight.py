"""Preflight of `imagebuilder build`: mirrors and credentials are checked from the host, in
seconds, before any base disk, VM or Packer; and a download that fails inside a build is
the cell's one-line error, not Packer's "Error executing Ansible".

Through the real CLI with a qemu cell whose mirrors point at local servers: one port that
refuses, one that accepts and never answers, the fixture release mirror (good, or with a
file missing). AWS credentials against moto. A fake `packer` (and base-disk tools) first
on PATH records any call; the failing builds must not make one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from base_mirror import base_mirrors, publish_debian
from conftest import REPO, ReleaseMirror
from imagebuilder.build import Limits, NoHooks, PackerExecutor, Scheduler, State
from imagebuilder.progress import PlainReporter
from mirror import fixture_lock, mirrors_for, serve_directory
from nullcells import null_jobs
from services import aws_env, glance_url, moto_url, openstack_env  # noqa: F401 - pytest fixtures

# The tools a qemu build would start first: none may run when preflight fails.
WATCHED_TOOLS = ("packer", "mmdebstrap", "qemu-img", "qemu-system-x86_64", "qemu-system-aarch64")
FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> {record}
if [ "$(basename "$0")" = packer ] && [ "$1" = version ]; then echo "Packer v1.6.6"; exit 0; fi
echo "$(basename "$0"): fake tool of test_preflight, refusing to run" >&2
exit 1
"""


@pytest.fixture
def refusing_url() -> str:
    """A loopback port with nothing listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class Workspace:
    """A matrix and versions lock in tmp_path, the fake tools, and the CLI run against them."""

    def __init__(self, tmp_path: Path, mirror: ReleaseMirror, bases: str) -> None:
        self.root = tmp_path
        self.mirror = mirror
        self.bases = bases  # the Debian suites' InRelease files the qemu base resolves to
        self.lock = fixture_lock(mirror.files, mirror.versions)
        self.minor = next(iter(self.lock["minors"]))
        (tmp_path / "versions.lock.yaml").write_text(yaml.safe_dump(self.lock))
        self.record = tmp_path / "tools-called"
        bin_dir = tmp_path / "fake-bin"
        bin_dir.mkdir()
        for tool in WATCHED_TOOLS:
            path = bin_dir / tool
            path.write_text(FAKE_TOOL.format(record=self.record))
            path.chmod(0o755)
        self.cache = tmp_path / "cache"
        self.build_dir = tmp_path / "build"
        self.extra_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CI": "true",
                          "IMAGEBUILDER_CACHE": str(self.cache), "IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue")}

    @property
    def env(self) -> dict[str, str]:
        """This process's environment (as a test changed it) with the fake tools and private caches."""
        return {**os.environ, **self.extra_env}

    @property
    def cell_id(self) -> str:
        return f"qemu-debian-12-k8s-{self.minor}"

    def matrix(self, mirrors: dict[str, str], clouds: dict | None = None) -> Path:
        path = self.root / "matrix.yaml"
        path.write_text(yaml.safe_dump({"os": ["debian-12"], "kubernetes": [self.minor],
                                        "clouds": clouds or {"qemu": {}},
                                        "mirrors": {**base_mirrors(self.bases), **mirrors}}))
        return path

    def build(self, matrix: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "build", "-m", str(matrix),
                                 "-o", str(self.build_dir), *args],
                                cwd=REPO, env=env or self.env, capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
        print(f"\nimagebuilder build {' '.join(args)}: exit {result.returncode} in {elapsed:.1f} s", file=sys.stderr)
        return result, elapsed

    def tools_called(self) -> list[str]:
        return self.record.read_text().splitlines() if self.record.exists() else []

    def assert_nothing_started(self) -> None:
        assert self.tools_called() == []
        assert not (self.build_dir / self.cell_id).exists(), "the cell was rendered"
        assert not self.cache.exists() or not any(self.cache.rglob("*")), "a base disk was started"


@pytest.fixture
def workspace(tmp_path: Path, release_mirror: ReleaseMirror) -> Iterator[Workspace]:
    publish_debian(tmp_path / "bases", "Sat, 01 Mar 2025 10:00:00 UTC")
    with serve_directory(tmp_path / "bases") as bases:
        yield Workspace(tmp_path, release_mirror, bases)


def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("imagebuilder: ") and "preflight found" not in line]


def test_unreachable_mirrors_fail_in_seconds_before_anything_starts(workspace: Workspace, refusing_url: str,
                                                                    silent_url: str) -> None:
    mirrors = {**workspace.mirror.mirrors, "kubernetes": f"{refusing_url}/kubernetes",
               "containerd": f"{silent_url}/containerd"}
    result, elapsed = workspace.build(workspace.matrix(mirrors))

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = problem_lines(result.stderr)
    cell, version = workspace.cell_id, workspace.mirror.versions["kubernetes"]
    for name in ("kubeadm", "kubelet", "kubectl"):
        url = f"{refusing_url}/kubernetes/v{version}/bin/linux/amd64/{name}"
        assert f"imagebuilder: {cell}: {name}: {url}: unreachable (connection refused; " \
               f"put the file on the mirror or fix mirrors.kubernetes in {workspace.root / 'matrix.yaml'})" in lines
    containerd = [line for line in lines if f": containerd: {silent_url}/containerd/" in line]
    assert len(containerd) == 1 and "unreachable (no answer within 5s" in containerd[0] \
        and "mirrors.containerd" in containerd[0], lines
    assert len(lines) == 4, lines  # runc, crictl and the CNI plugins are on the good mirror
    assert "nothing was built" in result.stderr
    assert elapsed < 30
    workspace.assert_nothing_started()


def test_a_file_missing_at_the_mirror_is_named(workspace: Workspace, tmp_path: Path) -> None:
    root = tmp_path / "partial-mirror"
    shutil.copytree(workspace.mirror.root, root)
    kubelet = workspace.mirror.files["kubelet"]
    (root / kubelet.component / kubelet.path).unlink()
    with serve_directory(root) as base_url:
        result, _ = workspace.build(workspace.matrix(mirrors_for(base_url)))

    assert result.returncode == 2, result.stderr
    assert problem_lines(result.stderr) == [
        f"imagebuilder: {workspace.cell_id}: kubelet: {kubelet.url(base_url)}: not found at the mirror "
        f"(HTTP 404; put the file on the mirror or fix mirrors.kubernetes in {workspace.root / 'matrix.yaml'})"]
    workspace.assert_nothing_started()


def test_a_good_mirror_passes_and_dry_run_prints_the_preflight(workspace: Workspace) -> None:
    result, _ = workspace.build(workspace.matrix(workspace.mirror.mirrors), "--dry-run")

    assert result.returncode == 0, result.stderr
    assert problem_lines(result.stderr) == []
    assert "preflight: ok (7 download URLs, clouds: qemu)" in result.stdout
    assert f"{'build (new)':<40} {workspace.cell_id}" in result.stdout
    assert workspace.tools_called() == ["packer version"]  # render asks for the version; nothing builds


def test_dry_run_reports_problems_with_its_plan(workspace: Workspace, refusing_url: str) -> None:
    matrix = workspace.matrix({**workspace.mirror.mirrors, "runc": refusing_url})
    result, _ = workspace.build(matrix, "--dry-run")

    assert result.returncode == 0, result.stderr  # a dry run reports; it runs nothing to stop
    assert "preflight: 1 problem, a build would stop here" in result.stdout
    assert f"{'build (new)':<40} {workspace.cell_id}" in result.stdout
    [line] = problem_lines(result.stderr)
    assert f": runc: {refusing_url}/v" in line and "mirrors.runc" in line
    assert "packer build" not in workspace.tools_called()


def test_skip_preflight_goes_straight_to_the_build(workspace: Workspace, refusing_url: str) -> None:
    matrix = workspace.matrix({**workspace.mirror.mirrors, "runc": refusing_url})
    result, _ = workspace.build(matrix, "--skip-preflight", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "preflight" not in result.stdout + result.stderr


def test_upstream_urls_suggest_a_mirror_for_airgapped_builds() -> None:
    from imagebuilder.preflight import UrlCheck, url_problem

    check = UrlCheck(url="https://dl.k8s.io/release/v1.35.1/bin/linux/amd64/kubeadm", name="kubeadm",
                     cells=("qemu-debian-12-k8s-1.35", "qemu-ubuntu-2204-k8s-1.35", "aws-debian-12-k8s-1.35",
                            "gcp-debian-12-k8s-1.35"))
    assert url_problem(check, "unreachable (host name not resolved)", "matrix.yaml").line() == (
        "qemu-debian-12-k8s-1.35, qemu-ubuntu-2204-k8s-1.35, aws-debian-12-k8s-1.35 and 1 more: kubeadm: "
        "https://dl.k8s.io/release/v1.35.1/bin/linux/amd64/kubeadm: unreachable (host name not resolved; "
        "set mirrors.kubernetes in matrix.yaml for airgapped builds)")


# -- credentials ---------------------------------------------------------------------------------

def test_aws_credentials_that_work_pass(workspace: Workspace, aws_env: str) -> None:
    matrix = workspace.matrix(workspace.mirror.mirrors, clouds={"aws": {"regions": ["eu-west-1"]}})
    result, _ = workspace.build(matrix, "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "preflight: ok (7 download URLs, clouds: aws)" in result.stdout


def test_no_aws_credentials_fail_naming_the_cloud_and_the_fix(workspace: Workspace, aws_env: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    matrix = workspace.matrix(workspace.mirror.mirrors, clouds={"aws": {"regions": ["eu-west-1"]}})
    result, elapsed = workspace.build(matrix)

    assert result.returncode == 2
    # the existence lookup asks AWS first (describe_images), before the preflight would
    [line] = problem_lines(result.stderr)
    assert line.startswith("imagebuilder: aws eu-west-1: ")
    assert line.endswith("no AWS credentials found | fix: export AWS_PROFILE "
                         "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or run where an instance role applies")
    assert workspace.tools_called() == []
    assert elapsed < 30


def test_an_unwritable_local_catalogue_fails_the_qemu_cells(workspace: Workspace, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the catalogue's parent should be\n")
    env = {**workspace.env, "IMAGEBUILDER_CATALOGUE": str(blocker / "catalogue")}
    result, _ = workspace.build(workspace.matrix(workspace.mirror.mirrors), env=env)

    assert result.returncode == 2
    [line] = problem_lines(result.stderr)
    assert line.startswith(f"imagebuilder: qemu: local catalogue {blocker / 'catalogue'} is not writable")
    assert "IMAGEBUILDER_CATALOGUE" in line
    assert workspace.tools_called() == []


# -- a failed download inside a build --------------------------------------------------------------

def test_a_download_failing_inside_packer_is_the_cells_error(workspace: Workspace, refusing_url: str,
                                                             tmp_path: Path) -> None:
    """Real Packer (null builder) runs the real roles' fetch with ansible-playbook on this host;
    the cell's error is the role's line naming the file, the URL and mirrors:."""
    from imagebuilder import render
    from imagebuilder.config import load_matrix
    from imagebuilder.planner import plan

    mirrors = {**workspace.mirror.mirrors, "crictl": f"{refusing_url}/crictl"}
    [cell] = plan(load_matrix(workspace.matrix(mirrors)))
    variables = {**render.ansible_vars(cell), "imagebuilder_staging_dir": str(tmp_path / "staging"),
                 "imagebuilder_state_dir": str(tmp_path / "state"), "ansible_python_interpreter": "/usr/bin/python3",
                 # Only crictl is fetched then: the run stays short.
                 "containerd_install_method": "package", "kubernetes_install_method": "package"}
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    (tmp_path / "fetch.yml").write_text(yaml.safe_dump([{
        "name": "Fetch the release files", "hosts": "all",
        "tasks": [{"name": "Fetch", "ansible.builtin.include_role": {"name": "imagebuilder", "tasks_from": "fetch.yml"}}],
    }]))
    playbook = (f"ANSIBLE_CONFIG={REPO}/ansible/ansible.cfg ANSIBLE_ROLES_PATH={REPO}/ansible/roles "
                f"ANSIBLE_NOCOLOR=1 ansible-playbook -i localhost, -c local {tmp_path}/fetch.yml "
                f"-e @{tmp_path}/vars.json </dev/null")
    jobs = null_jobs([cell], tmp_path / "null-build", lambda _cell: [playbook])
    scheduler = Scheduler(jobs, Limits(jobs=1), PackerExecutor(), NoHooks(), PlainReporter(open(os.devnull, "w")),
                          retries=0)
    [job] = scheduler.run()

    assert job.state == State.FAILED
    log = job.log_path.read_text()
    assert "Connection refused" in log  # the real failure, from Ansible's get_url inside Packer
    url = f"{refusing_url}/crictl/v{workspace.mirror.versions['crictl']}/crictl-v{workspace.mirror.versions['crictl']}-linux-amd64.tar.gz"
    assert job.error == (f"crictl: {url}: download failed (Request failed: <urlopen error [Errno 111] "
                         "Connection refused>) | fix: check mirrors.crictl in matrix.yaml (the mirror must serve this path)")


# -- check_access of the other stores, against their local services ------------------------------

def test_openstack_access_against_glance_and_a_refusing_endpoint(openstack_env: str, refusing_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from imagebuilder.clouds import CloudError, store_for

    store_for("openstack", {}).check_access()
    monkeypatch.setenv("OS_IMAGE_ENDPOINT_OVERRIDE", refusing_url + "/")
    with pytest.raises(CloudError, match=r"^openstack .*list images failed: .*\| fix: check that the image "
                                         r"endpoint is up"):
        store_for("openstack", {}, connect_retries=0).check_access()


def test_gcp_access_reads_one_image_of_the_project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("google.cloud.compute_v1")
    from google.auth.credentials import AnonymousCredentials

    from imagebuilder.clouds import CloudError
    from imagebuilder.clouds.gcp.store import GcpImageStore
    from imagebuilder.clouds.gcp.settings import GcpSettings
    from standins.gcp_compute import GcpComputeStandin

    compute = GcpComputeStandin()
    compute.start()
    try:
        GcpImageStore(GcpSettings(project_id="capi-images"), credentials=AnonymousCredentials(),
                      api_endpoint=compute.base_url).check_access()
        [request] = compute.calls("GET", "/compute/v1/projects/capi-images/global/images$")
        assert request.query.get("maxResults") == "1"
    finally:
        compute.stop()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    with pytest.raises(CloudError, match=r"^gcp: no Google credentials found \| fix: set GOOGLE_APPLICATION"):
        GcpImageStore(GcpSettings(project_id="capi-images")).check_access()


def test_azure_access_needs_a_token_and_tolerates_a_missing_gallery(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("azure.mgmt.compute")
    from azure.core.credentials import AccessToken
    from azure.identity import EnvironmentCredential

    from imagebuilder.clouds import CloudError
    from imagebuilder.clouds.azure.store import AzureImageStore
    from imagebuilder.clouds.azure.settings import AzureSettings
    from standins.azure_compute import AzureComputeStandin

    class FixedToken:  # a TokenCredential, as DefaultAzureCredential is once signed in
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("fake-arm-token-not-a-secret", int(time.time()) + 3600)

    subscription = "00000000-1111-2222-3333-444444444444"
    settings = AzureSettings(resource_group="capi-images")
    arm = AzureComputeStandin()
    arm.start()
    try:
        AzureImageStore(settings, subscription_id=subscription, credential=FixedToken(), base_url=arm.base_url,
                        retry_total=0).check_access()
        assert arm.calls("GET", "/galleries/capi_images$"), "the gallery was not read"
    finally:
        arm.stop()
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                 "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CloudError, match=r"^azure: no working credentials \(.*\) \| fix: set AZURE_CLIENT_ID"):
        AzureImageStore(settings, subscription_id=subscription, credential=EnvironmentCredential(),
                        base_url="https://management.azure.com").check_access()


def test_a_dead_mirror_costs_one_timeout_not_one_per_file() -> None:
    """40 URLs on a host that accepts and never answers: at most one batch of connections is
    made (each then times out); the other URLs take that host's failure at once."""
    from imagebuilder.preflight import PARALLEL, Prober

    held: list[socket.socket] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(0.2)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        stop = False

        def hold() -> None:
            while not stop:
                try:
                    held.append(listener.accept()[0])
                except OSError:
                    continue

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        prober = Prober(timeout=1.0)
        urls = [f"{base}/kubernetes/v1.35.{n}/bin/linux/amd64/kubeadm" for n in range(40)]
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            failures = list(pool.map(prober, urls))
        stop = True
        holder.join()
    for connection in held:
        connection.close()
    assert failures == ["unreachable (no answer within 1s)"] * 40
    assert 1 <= len(held) <= PARALLEL
