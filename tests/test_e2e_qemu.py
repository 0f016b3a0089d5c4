"""End to end, as a new user runs it first: `imagebuilder build` of the qemu debian-12 cell.

The real thing, at a small scale: the cached Debian base, the real Ansible roles (release
files from the fixture mirror, Debian packages from Debian's mirror, containerd and runc
from Debian's archive: ``containerd_install_method: package``), the boot test of the
produced qcow2 through its own GRUB, and the local catalogue; a second run skips the cell.

Both builders build the same cell: the offline build (the default without KVM) in the main
test, Packer's qemu template under TCG once per session in the background (12-17 minutes
here), shared by the test that keeps the Packer path honest and compares the two images.
The Packer build starts with the first test of the session and its test runs last (see
conftest.py), so the rest of the suite runs meanwhile. Its image is not booted again: the
offline image is booted twice, and the Packer image is compared with it file by file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from conftest import REPO, process_alive
from conftest import test_cache_dir as shared_test_cache
from imagebuilder import procs, qemu, render, sbom
from imagebuilder.distributions import debian
from imagebuilder.clouds.kubevirt import containerdisk_of
from imagebuilder.clouds.local import LocalCatalogue
from imagebuilder.clouds.ova.ovf import Hardware, Product, build_ova
from imagebuilder.clouds.qemu import BUILD_USER
from imagebuilder.clouds.raw.disk import raw_outputs
from imagebuilder.guestcheck import GuestSession
from mirror import fixture_lock
from test_ova_output import check_ova, ova_properties

pytestmark = pytest.mark.slow

# Inside QEMU's user network the host's loopback is 10.0.2.2: QEMU itself connects to
# 127.0.0.1 on the guest's behalf, so nothing leaves this machine. The offline build
# fetches on the host itself, so it uses 127.0.0.1.
HOST_ALIAS = {"offline": "127.0.0.1", "packer": "10.0.2.2"}
# The fixture crictl only prints its version: the validate role's `crictl info` check is off.
CELL_VARS = {"containerd_install_method": "package", "validate_cri_checks": False}
PACKER_TIMEOUT = 3600
OFFLINE_TIMEOUT = 1500
CONTAINER_IMAGE = "docker.io/library/busybox:imagebuilder-test"
CONTAINER_GREETING = "hello from a container in the image"
COMPARED_TREES = ("etc", "usr/local/bin", "opt/cni/bin", "usr/lib/cni")  # Debian's CNI plugins live in the last
# What may differ between the two builders' images, and why.
ALLOWED_DIFFERENCES = {
    # Backups shadow-utils writes when Packer's build user is added and removed; the offline
    # build has no build user.
    "etc/passwd-": "the Packer build adds and removes its build user",
    "etc/group-": "the Packer build adds and removes its build user",
    "etc/shadow-": "the Packer build adds and removes its build user",
    "etc/gshadow-": "the Packer build adds and removes its build user",
    "etc/subuid": "useradd gives the Packer build user a subordinate id range; userdel leaves the file",
    "etc/subgid": "useradd gives the Packer build user a subordinate id range; userdel leaves the file",
    "etc/subuid-": "the Packer build adds and removes its build user",
    "etc/subgid-": "the Packer build adds and removes its build user",
    # The build VM booted: cloud-init and udev wrote what a first boot writes.
    "etc/hostname": "cloud-init's set_hostname in the Packer build VM (manage_etc_hosts / local-hostname)",
    "etc/hosts": "cloud-init's manage_etc_hosts in the Packer build VM",
    "etc/network/interfaces.d/50-cloud-init": "cloud-init renders the build VM's network",
    "etc/ssh/sshd_config.d/50-cloud-init.conf": "cloud-init configures sshd for the build VM's login",
    "etc/sudoers.d/90-cloud-init-users": "cloud-init grants the build user sudo (the shutdown removes it)",
    "etc/ld.so.cache": "ldconfig ordering differs between the builders' runs",
    "etc/resolv.conf": "DHCP in the build VM writes the resolver; the offline tree keeps the base's empty file",
    "etc/adjtime": "the build VM's clock ran (hwclock/timesyncd)",
    "etc/machine-id": "checked empty by sysprep in both; listed in case a builder leaves a link",
    "etc/.pwd.lock": "shadow-utils' lock file, made when the build user is added",
    "etc/default/locale": "cloud-init's locale module in the Packer build VM writes LANG (a node's first boot does too)",
    "etc/imagebuilder-release": "BUILD_DATE and the git commit of each build (everything else must match)",
}
# The provenance lines that belong to one build: its time, and the checkout's commit then.
RELEASE_LINES_PER_BUILD = ("BUILD_DATE=", "IMAGEBUILDER_GIT_COMMIT=")
ALLOWED_PREFIXES = {
    "etc/ssh/ssh_host_": "host keys: sysprep removes them in both; listed for a rerun",
    "etc/cloud/cloud.cfg.d/": "none expected; cloud-init state in /etc is compared, not its cache",
}


def run_cli(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@dataclass
class CellBuild:
    """One builder's run of the cell: its matrix, output, catalogue and result."""

    builder: str
    work: Path
    env: dict[str, str]
    cell_id: str
    seconds: float = 0.0
    result: subprocess.CompletedProcess[str] | None = None

    @property
    def matrix(self) -> Path:
        return self.work / "matrix.yaml"

    @property
    def build_dir(self) -> Path:
        return self.work / "build"

    @property
    def cell_dir(self) -> Path:
        return self.build_dir / self.cell_id

    @property
    def log(self) -> Path:
        return self.cell_dir / "build.log"

    def options(self) -> list[str]:
        """`imagebuilder build`'s options besides the matrix."""
        # The host cannot reach 10.0.2.2, the name the Packer build VM has for the fixture mirror.
        unreachable_here = ["--skip-preflight"] if HOST_ALIAS[self.builder] != "127.0.0.1" else []
        # --offline: the base is the one base_ready built from the suites as they are (no InRelease pin)
        return ["-o", str(self.build_dir), "--offline", *unreachable_here]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "imagebuilder.cli", "build", "-m", str(self.matrix), *self.options()]

    def make(self, *targets: str) -> list[str]:
        """`make build-<target>` as a user runs it, with the same options (ARGS)."""
        return ["make", "-C", str(REPO), *targets, f"MATRIX={self.matrix}", f"PYTHON={sys.executable}",
                "ARGS=" + " ".join(self.options())]

    def failure(self) -> str:
        out = (self.result.stdout[-2000:] + "\n" + self.result.stderr[-2000:]) if self.result else ""
        log = self.log.read_text()[-8000:] if self.log.exists() else "no log"
        return f"{self.builder} build failed:\n{out}\n--- build.log tail ---\n{log}"

    def image(self) -> Path:
        return next((self.work / "catalogue").rglob("*.qcow2"))


def cell_build(work: Path, release_mirror, image_registry, builder: str) -> CellBuild:
    """The cell as a user declares it: the release mirror, and the registry mirror that holds
    kubeadm's images pinned by digest in the lock (pre-pulled at build time)."""
    work.mkdir(parents=True, exist_ok=True)
    lock = fixture_lock(release_mirror.files, release_mirror.versions, images=image_registry.lock)
    minor = next(iter(lock["minors"]))
    (work / "versions.lock.yaml").write_text(yaml.safe_dump(lock))
    mirrors = {component: url.replace("127.0.0.1", HOST_ALIAS[builder])
               for component, url in release_mirror.mirrors.items()}
    mirrors["registry"] = "http://" + image_registry.address.replace("127.0.0.1", HOST_ALIAS[builder])
    # One boot test per image kind is enough: the Packer image is compared with the booted one.
    qemu_settings = {"builder": builder, **({"boot_test": False} if builder == "packer" else {})}
    matrix = {"os": ["debian-12"], "kubernetes": [minor], "clouds": {"qemu": qemu_settings},
              "mirrors": mirrors, "overrides": [{"match": {"os": "debian-12"}, "ansible_vars": CELL_VARS}]}
    (work / "matrix.yaml").write_text(yaml.safe_dump(matrix))
    env = {**os.environ, "CI": "true", "IMAGEBUILDER_CACHE": str(shared_test_cache()),
           "IMAGEBUILDER_CATALOGUE": str(work / "catalogue"), "IMAGEBUILDER_QEMU_ACCEL": "tcg",
           "IMAGEBUILDER_SIGNING_KEY": signing_key_pem(work)}
    return CellBuild(builder=builder, work=work, env=env, cell_id=f"qemu-debian-12-k8s-{minor}")


def signing_key_pem(work: Path) -> str:
    """A throw-away Ed25519 key the build signs its provenance with; its public half beside it."""
    key = Ed25519PrivateKey.generate()
    (work / "signing.pub").write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def sbom_matches_dpkg(document: dict[str, Any]):
    """A boot-test hook: the SBOM's dpkg entries are what dpkg-query lists in the booted image."""

    def hook(session: GuestSession) -> list[qemu.Check]:
        differ = sorted(set(sbom.guest_dpkg_packages(session).items()) ^ set(sbom.dpkg_versions(document).items()))
        return [qemu.Check("SBOM lists the guest's dpkg packages", not differ, str(differ[:10]))]

    return hook


class BackgroundBuild:
    """The Packer build, started once and early, in its own process group (so only it is stopped)."""

    def __init__(self, build: CellBuild) -> None:
        self.build = build
        self.started = time.monotonic()
        self.output = build.work / "cli-output.txt"
        with self.output.open("w") as out:
            self.process = subprocess.Popen(build.command(), cwd=REPO, env=build.env, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def wait(self) -> CellBuild:
        if self.build.result is None:
            try:
                code = self.process.wait(timeout=max(1.0, PACKER_TIMEOUT - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                procs.stop_group(self.process)
                pytest.fail(f"the Packer build took over {PACKER_TIMEOUT}s", pytrace=False)
            self.build.seconds = time.monotonic() - self.started
            text = self.output.read_text()
            self.build.result = subprocess.CompletedProcess(self.process.args, code, text, "")
        return self.build

    def stop(self) -> None:
        if self.process.poll() is None:
            procs.stop_group(self.process)


@pytest.fixture(scope="session")
def base_ready() -> debian.BaseDisk:
    """The cached base (tree and disk), built before either builder needs it."""
    return debian.base_disk(cache=shared_test_cache())


@pytest.fixture(scope="session")
def packer_build(tmp_path_factory, release_mirror, image_registry, base_ready) -> Iterator[BackgroundBuild]:
    background = BackgroundBuild(cell_build(tmp_path_factory.mktemp("packer"), release_mirror, image_registry,
                                            "packer"))
    yield background
    background.stop()


@pytest.fixture
def packer_started_early(request) -> None:
    """Start the session's one Packer build now if a test that needs it was selected."""
    if any("packer_build" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("packer_build")


@pytest.fixture(scope="session")
def offline_build(tmp_path_factory, release_mirror, image_registry, base_ready) -> CellBuild:
    build = cell_build(tmp_path_factory.mktemp("offline"), release_mirror, image_registry, "offline")
    started = time.monotonic()
    # `make build-qemu-debian-12`, the way users start a build
    build.result = subprocess.run(build.make("build-qemu-debian-12"), cwd=REPO, env=build.env, capture_output=True,
                                  text=True, timeout=OFFLINE_TIMEOUT, stdin=subprocess.DEVNULL)
    build.seconds = time.monotonic() - started
    return build


# --- a container image the test builds: busybox from Debian's busybox-static --------------


def busybox_binary(cache: Path) -> bytes:
    """/bin/busybox of Debian's busybox-static (apt-get download, cached)."""
    target = cache / "busybox-static"
    binary = target / "bin/busybox"
    if not binary.exists():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "busybox-static"], cwd=target, check=True, capture_output=True)
        deb = next(target.glob("busybox-static_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    return binary.read_bytes()


def _blob(layout: tarfile.TarFile, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    layout.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def busybox_oci_archive(busybox: bytes) -> bytes:
    """An OCI image layout (as a tar) with one layer: /bin/busybox and /bin/sh -> busybox."""
    layer_raw = io.BytesIO()
    with tarfile.open(fileobj=layer_raw, mode="w") as layer:
        for name in ("bin/",):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            layer.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(busybox), 0o755
        layer.addfile(info, io.BytesIO(busybox))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        layer.addfile(link)
    diff_id = hashlib.sha256(layer_raw.getvalue()).hexdigest()
    layer_gz = gzip.compress(layer_raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as layout:
        config_ref = _blob(layout, config)
        layer_ref = _blob(layout, layer_gz)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_ref},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_ref}],
        }).encode()
        manifest_ref = _blob(layout, manifest)
        index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_ref,
            "annotations": {"io.containerd.image.name": CONTAINER_IMAGE,
                            "org.opencontainers.image.ref.name": CONTAINER_IMAGE.rsplit(":", 1)[1]}}]}).encode()
        for name, data in (("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", index)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            layout.addfile(info, io.BytesIO(data))
    return out.getvalue()


def runs_a_container(archive: bytes):
    """A boot-test hook: import the archive into containerd's k8s.io namespace and run it with runc."""

    def hook(session: GuestSession) -> list[qemu.Check]:
        session.put("/root/busybox-oci.tar", archive)
        imported = session.command(["ctr", "-n", "k8s.io", "images", "import", "/root/busybox-oci.tar"], timeout=300)
        run = session.command(["ctr", "-n", "k8s.io", "run", "--rm", CONTAINER_IMAGE, "imagebuilder-test",
                               "/bin/sh", "-c", f"echo {CONTAINER_GREETING}; busybox uname -s"], timeout=300)
        runc = session.command(["runc", "--version"])
        return [
            qemu.Check("container image imported", imported["rc"] == 0, (imported["stdout"] + imported["stderr"])[-300:]),
            qemu.Check("container ran", run["rc"] == 0 and run["stdout"].splitlines() == [CONTAINER_GREETING, "Linux"],
                       (run["stdout"] + run["stderr"])[-300:]),
            qemu.Check("runtime is runc", runc["rc"] == 0 and "runc version" in runc["stdout"], runc["stdout"][:200]),
        ]

    return hook


def linked(image: Path, directory: Path) -> Path:
    """The catalogued image hard-linked into a directory of the test's, for an output to be made beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / image.name
    os.link(image, target)
    return target


def booted_by_itself(session: GuestSession) -> list[qemu.Check]:
    cmdline = session.command(["cat", "/proc/cmdline"])["stdout"].strip()
    build_user = session.command(["id", BUILD_USER])
    return [qemu.Check("grub booted it", cmdline.startswith("BOOT_IMAGE=") and "root=UUID=" in cmdline, cmdline),
            qemu.Check("build user removed", build_user["rc"] != 0, build_user["stdout"].strip())]


# --- the tests ---------------------------------------------------------------------------


def assert_built_and_catalogued(build: CellBuild, release_mirror) -> None:
    if build.result is None or build.result.returncode != 0:
        pytest.fail(build.failure(), pytrace=False)
    listed = run_cli("images", "list", "--cloud", "local", "--output", "json", env=build.env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    images = json.loads(listed.stdout)
    assert len(images) == 1
    plan = json.loads(run_cli("plan", "-m", str(build.matrix), "--format", "json", "--offline", env=build.env,
                              timeout=120).stdout)
    assert images[0]["build_key"] == plan[0]["build_key"]
    assert images[0]["kubernetes_version"] == f"v{release_mirror.versions['kubernetes']}"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(build.image())],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["actual-size"] < info["virtual-size"]  # sparse and compressed


def assert_built_boot_tested_catalogued(build: CellBuild, release_mirror, image_registry) -> dict:
    assert_built_and_catalogued(build, release_mirror)
    print(f"\ne2e qemu {build.builder} build + boot test: {build.seconds:.0f} s", file=sys.stderr)
    boot = json.loads((build.cell_dir / "boot-test.json").read_text())
    checks = {check["name"]: check for check in boot["checks"]}
    assert boot["ok"], boot
    for name in ("ssh login", "cloud-init", "containerd active", "kubelet enabled", "kubeadm version",
                 "provenance", "binary: kubeadm version", "service enabled: containerd",
                 "module loaded: br_netfilter", "sysctl live: net.ipv4.ip_forward"):
        assert checks[name]["ok"], checks[name]
    assert not any(name == "validate role" for name in checks)  # the role's checks come one by one
    assert f"v{release_mirror.versions['kubernetes']}" in checks["kubeadm version"]["detail"]
    # Pre-pulled at build time from the registry mirror, found in the booted guest's containerd
    # under registry.k8s.io's names with the pinned digests.
    for path, tag in image_registry.images.items():
        check = checks[f"image present: registry.k8s.io/{path}:{tag}"]
        assert check["ok"], check
    return boot


def test_offline_build_boots_runs_containers_and_is_skipped_next_time(
        packer_started_early, offline_build: CellBuild, release_mirror, image_registry, tmp_path: Path) -> None:
    build = offline_build
    boot = assert_built_boot_tested_catalogued(build, release_mirror, image_registry)
    assert "offline build" in build.log.read_text()
    assert "packer build" not in build.log.read_text()
    stages = json.loads((build.cell_dir / "offline-stages.json").read_text())
    print(f"offline stages: {stages}; boot test {boot['seconds']}", file=sys.stderr)

    # Its SBOM (CycloneDX 1.5, read from the built tree) validates, names the runtime and
    # Kubernetes, and its signed provenance verifies against the catalogued image.
    (record,) = json.loads(run_cli("images", "list", "--cloud", "local", "--output", "json", env=build.env,
                                   timeout=120).stdout)
    shown = run_cli("images", "sbom", record["image_id"], env=build.env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(shown.stdout) is None
    document = json.loads(shown.stdout)
    assert {"containerd", "kubelet", "kubeadm"} <= {component["name"] for component in document["components"]}
    verified = run_cli("images", "verify", record["image_id"], "--key", str(build.work / "signing.pub"),
                       env=build.env, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The same image booted again, as the raw output makes it (clouds/raw: the raw disk for bare
    # metal, its gzip and sha256 files): the boot test runs on the raw disk. It runs a container
    # from an image built here, booted through its own GRUB without a build user, its packages are
    # the SBOM's, and a wrong build key fails the boot test (only that check).
    started = time.monotonic()
    raw_files = raw_outputs(linked(build.image(), tmp_path / "raw"), "gz", level=1)
    print(f"raw output of the built image: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert [path.name for path in raw_files.sums] == [raw_files.raw.name + ".sha256sum",
                                                      raw_files.compressed.name + ".sha256sum"]
    with gzip.open(raw_files.compressed) as unpacked:
        assert unpacked.read(1024**2) == raw_files.raw.read_bytes()[:1024**2]  # the same disk, its MBR first
    archive = busybox_oci_archive(busybox_binary(shared_test_cache()))
    wrong = qemu.boot_test(raw_files.raw, {"build_key": "0" * 64}, user="debian", workdir=tmp_path / "wrong-boot",
                           validate=[booted_by_itself, runs_a_container(archive), sbom_matches_dpkg(document)],
                           disk_format="raw")
    by_name = {check.name: check for check in wrong.checks}
    assert not wrong.ok
    assert [check.name for check in wrong.checks if not check.ok] == ["provenance"]
    for name in ("ssh login", "grub booted it", "build user removed", "container image imported",
                 "container ran", "runtime is runc", "SBOM lists the guest's dpkg packages"):
        assert by_name[name].ok, (name, by_name[name].detail)
    for path in raw_files.all:
        path.unlink()

    attempts_before = build.log.read_text().count("=== attempt")
    again = run_cli(*build.command()[3:], env=build.env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "skipped" in again.stdout
    assert build.log.read_text().count("=== attempt") == attempts_before  # nothing built again


def test_the_ova_and_the_containerdisk_of_the_built_image(offline_build: CellBuild, image_registry,
                                                          tmp_path: Path) -> None:
    """The local outputs of the image the offline build made (the raw disk is booted by the offline
    test): the ova (clouds/ova) descriptor and manifest check out as test_ova_output checks them on a
    small disk, its VMDK holding this disk; the kubevirt containerDisk (clouds/kubevirt) is pushed to
    the session's registry, listed, resolved and pruned there through the CLI."""
    build = offline_build
    if build.result is None or build.result.returncode != 0:
        pytest.fail(build.failure(), pytrace=False)
    (record,) = LocalCatalogue(build.env["IMAGEBUILDER_CATALOGUE"]).list_images()
    metadata = record.metadata
    assert metadata is not None
    qcow2 = linked(build.image(), tmp_path / "outputs")
    virtual_size = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(qcow2)], capture_output=True,
                                             text=True, check=True).stdout)["virtual-size"]
    product = Product(name=qcow2.stem, kubernetes_semver=metadata.kubernetes_version, distro_name="debian",
                      distro_version="12", distro_arch="amd64", build_key=metadata.build_key,
                      build_timestamp=metadata.build_timestamp, versions={"kubernetes": metadata.kubernetes_version},
                      imagebuilder_version=metadata.version)
    started = time.monotonic()
    files = build_ova(qcow2, qcow2.stem, Hardware(version=15, cpus=2, memory_mb=2048, network="VM Network"), product)
    print(f"ova of the built image: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert check_ova(files.ova, files.sums)["virtual-size"] == virtual_size
    properties = ova_properties(files.ova)
    assert properties["IMAGEBUILDER_BUILD_KEY"] == metadata.build_key
    assert properties["KUBERNETES_SEMVER"] == metadata.kubernetes_version

    repository = f"{image_registry.address}/capi/node"
    started = time.monotonic()
    image_id = containerdisk_of(qcow2, metadata, {"registry": repository, "tls_verify": False}, tmp_path)
    print(f"containerDisk of the built image, pushed: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert image_id.startswith(f"{repository}@sha256:")
    manifest = requests.get(f"http://{image_registry.address}/v2/capi/node/manifests/{image_id.split('@')[1]}",
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=30).json()
    (layer,) = manifest["layers"]
    layer_blob = requests.get(f"http://{image_registry.address}/v2/capi/node/blobs/{layer['digest']}", timeout=300)
    with tarfile.open(fileobj=io.BytesIO(layer_blob.content)) as tar:
        disk = tar.getmember(f"disk/{qcow2.stem}.qcow2")
        assert (disk.uid, disk.gid) == (107, 107) and disk.size == qcow2.stat().st_size
        assert hashlib.sha256(tar.extractfile(disk).read()).digest() == hashlib.sha256(qcow2.read_bytes()).digest()

    # A previous nightly's containerDisk of the cell (a small disk), which retention may prune.
    previous = tmp_path / "previous" / f"{qcow2.stem.rsplit('-', 1)[0]}-20250101000000.qcow2"
    previous.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(previous), "64M"], check=True)
    previous_id = containerdisk_of(previous, replace(metadata, build_key="0" * 64, build_timestamp="20250101000000"),
                                   {"registry": repository, "tls_verify": False}, tmp_path)

    matrix = yaml.safe_load(build.matrix.read_text())
    matrix["clouds"]["kubevirt"] = {"registry": repository, "tls_verify": False, "in_use_check": "tags"}
    matrix["retention"] = {"keep_newest": 1, "min_age_days": 0, "deprecate_grace_days": 0}
    kubevirt_matrix = build.work / "kubevirt.yaml"  # beside the build's versions.lock.yaml
    kubevirt_matrix.write_text(yaml.safe_dump(matrix))
    options = ("-m", str(kubevirt_matrix), "--cloud", "kubevirt")
    listing = run_cli("images", "list", *options, "--output", "json", env=build.env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    listed = json.loads(listing.stdout)
    assert [(r["image_id"], r["build_key"]) for r in listed] == [(image_id, metadata.build_key),
                                                                 (previous_id, "0" * 64)]  # newest first
    resolved = run_cli("images", "resolve", *options, "--os", "debian-12", "--k8s", metadata.kubernetes_minor,
                       env=build.env, timeout=120)
    assert resolved.returncode == 0 and resolved.stdout.strip() == image_id, resolved.stdout + resolved.stderr
    dry = run_cli("prune", *options, env=build.env, timeout=120)
    assert dry.returncode == 0 and "1 would deprecate" in dry.stdout, dry.stdout + dry.stderr  # dry run: nothing changes
    for step in ("1 deprecated", "1 deleted"):  # the previous one: deprecated first, deleted on the next run
        pruned = run_cli("prune", *options, "--apply", env=build.env, timeout=120)
        assert pruned.returncode == 0 and step in pruned.stdout, pruned.stdout + pruned.stderr
    listed = json.loads(run_cli("images", "list", *options, "--output", "json", env=build.env, timeout=120).stdout)
    assert [r["image_id"] for r in listed] == [image_id]
    assert run_cli("images", "resolve", *options, "--os", "debian-12", "--k8s", metadata.kubernetes_minor,
                   env=build.env, timeout=120).stdout.strip() == image_id


# --- Ctrl-C and SIGTERM -----------------------------------------------------------------------


def session_processes(session_id: int) -> list[int]:
    """The processes still in the session this test started (its own children only)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            found.append(int(stat.parent.name))
    return found


def wait_for(condition, what: str, process: subprocess.Popen, output: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited before {what}: {output.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"
        time.sleep(0.5)


def assert_stopped_promptly(process: subprocess.Popen, sig: signal.Signals) -> float:
    sent = time.monotonic()
    process.send_signal(sig)
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        procs.stop_group(process)
        pytest.fail(f"{sig.name} did not stop it within 90 s", pytrace=False)
    deadline = time.monotonic() + 30
    while session_processes(process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_processes(process.pid) == [], "children outlived the interrupt"
    return time.monotonic() - sent


def test_make_builds_image_builders_raw_and_kubevirt_targets_on_the_cached_base(
        offline_build: CellBuild, release_mirror, image_registry, tmp_path: Path) -> None:
    """`make build-raw-debian-12 build-kubevirt-qemu-debian-12` (image-builder's names) after the qemu
    build's `make build-qemu-debian-12`: both cells start from the base that build used (the cache, not
    built again), and each output is catalogued where `images` finds it (no boot tests: the raw disk and
    the containerDisk of the same build are booted and checked above)."""
    assert offline_build.result is not None and offline_build.result.returncode == 0, offline_build.failure()
    build = cell_build(tmp_path / "work", release_mirror, image_registry, "offline")
    repository = f"{image_registry.address}/capi/make-node"
    matrix = yaml.safe_load(build.matrix.read_text())
    matrix["clouds"] = {"raw": {"builder": "offline", "boot_test": False, "compression_level": 1},
                        "kubevirt": {"builder": "offline", "boot_test": False, "tls_verify": False,
                                     "registry": repository}}
    build.matrix.write_text(yaml.safe_dump(matrix))
    started = time.monotonic()
    result = subprocess.run(build.make("build-raw-debian-12", "build-kubevirt-qemu-debian-12"), cwd=REPO,
                            env=build.env, capture_output=True, text=True, timeout=OFFLINE_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    print(f"make raw and kubevirt: {time.monotonic() - started:.0f} s", file=sys.stderr)
    minor = matrix["kubernetes"][0]
    logs = {cloud: build.build_dir / f"{cloud}-debian-12-k8s-{minor}" / "build.log" for cloud in ("raw", "kubevirt")}
    assert result.returncode == 0, (result.stdout[-3000:] + result.stderr[-2000:] + "".join(
        log.read_text()[-3000:] for log in logs.values() if log.exists()))

    def base_tree(log: Path) -> str:
        return next(line for line in log.read_text().splitlines() if "copying the base tree" in line)

    assert base_tree(logs["raw"]) == base_tree(logs["kubevirt"]) == base_tree(offline_build.log)

    def listed(cloud: str) -> list[dict]:
        shown = run_cli("images", "list", "-m", str(build.matrix), "--cloud", cloud, "--output", "json",
                        env=build.env, timeout=120)
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)

    (raw,) = listed("raw")
    assert raw["os"] == "debian-12" and raw["arch"] == "amd64" and raw["published"]
    names = [Path(name).name for name in raw["files"]]
    assert any(name.endswith(".raw.gz") for name in names) and any(name.endswith(".sha256sum") for name in names)
    (disk,) = listed("kubevirt")
    assert disk["image_id"].startswith(f"{repository}@sha256:") and disk["build_key"] != raw["build_key"]
    assert disk["kubernetes_version"] == raw["kubernetes_version"]


def test_sigterm_stops_the_offline_build_while_ansible_runs_and_cleans_up(
        base_ready, release_mirror, image_registry, tmp_path: Path) -> None:
    build = cell_build(tmp_path / "work", release_mirror, image_registry, "offline")
    output = tmp_path / "output.txt"
    with output.open("w") as out:
        process = subprocess.Popen(build.command(), cwd=REPO, env=build.env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: build.log.exists() and "TASK [" in build.log.read_text(errors="replace"),
             "Ansible task in build.log", process, output)
    seconds = assert_stopped_promptly(process, signal.SIGTERM)
    print(f"\noffline build stopped {seconds:.1f} s after SIGTERM", file=sys.stderr)
    assert process.returncode == 130, output.read_text()[-2000:]
    assert "interrupted" in output.read_text()
    assert "cancelled" in build.log.read_text()
    assert not (build.cell_dir / "offline").exists(), "the build's root tree was left behind"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in mounts
    assert not list((build.work / "catalogue").rglob("*.qcow2")), "nothing catalogued from a stopped build"


BOOT_SCRIPT = """
import sys
from pathlib import Path
from imagebuilder import procs, qemu
procs.interrupt_on_signals()
qemu.boot_test(Path(sys.argv[1]), {{"build_key": "0" * 64}}, user="debian", workdir=Path(sys.argv[2]))
"""


def test_ctrl_c_stops_the_boot_test_and_its_vm(offline_build: CellBuild, tmp_path: Path) -> None:
    if offline_build.result is None or offline_build.result.returncode != 0:
        pytest.fail(offline_build.failure(), pytrace=False)
    workdir = tmp_path / "boot"
    output = tmp_path / "output.txt"
    with output.open("w") as out:
        process = subprocess.Popen([sys.executable, "-c", BOOT_SCRIPT.format(), str(offline_build.image()),
                                    str(workdir)], cwd=REPO, env=offline_build.env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile = workdir / qemu.PIDFILE
    # Interrupted at once: the VM has just started (the window where it once outlived Ctrl-C).
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the VM's pid file", process, output,
             timeout=300)
    vm_pid = int((workdir / qemu.PIDFILE).read_text())  # the VM this test's boot started (its own session)
    seconds = assert_stopped_promptly(process, signal.SIGINT)
    print(f"\nboot test stopped {seconds:.1f} s after Ctrl-C", file=sys.stderr)
    assert process.returncode != 0 and "KeyboardInterrupt" in output.read_text()
    deadline = time.monotonic() + 30
    while process_alive(vm_pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if process_alive(vm_pid):
        os.kill(vm_pid, signal.SIGKILL)
        pytest.fail("the boot test's VM outlived Ctrl-C", pytrace=False)


# --- one image, two paths ---------------------------------------------------------------------


def image_tree(image: Path, dest: Path, paths: tuple[str, ...] = COMPARED_TREES) -> Path:
    """The image's ``paths`` (and dpkg's status) copied out with debugfs: no mount, no loop device."""
    raw = dest.with_suffix(".raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    source = f"{raw}?offset={debian.PARTITION_START}"
    for path in (*paths, "var/lib/dpkg/status"):
        target = dest / Path(path).parent
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debugfs", "-R", f"rdump /{path} {target}", source], check=True, capture_output=True)
    raw.unlink()
    return dest


def tree_manifest(root: Path, paths: tuple[str, ...] = COMPARED_TREES) -> dict[str, str]:
    """relative path -> sha256 (files), 'link:<target>' (links) or 'dir'."""
    entries: dict[str, str] = {}
    for top in paths:
        for path in [root / top, *sorted((root / top).rglob("*"))]:
            if not path.exists() and not path.is_symlink():
                continue
            name = str(path.relative_to(root))
            if path.is_symlink():
                entries[name] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                entries[name] = "dir"
            else:
                entries[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def packages(root: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for stanza in (root / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Status", "").endswith(" installed"):
            found[fields["Package"]] = fields["Version"]
    return found


def enabled_units(entries: dict[str, str]) -> set[str]:
    return {name for name in entries if "/systemd/system/" in name and ".wants/" in name}


def allowed(name: str) -> str | None:
    if name in ALLOWED_DIFFERENCES:
        return ALLOWED_DIFFERENCES[name]
    return next((why for prefix, why in ALLOWED_PREFIXES.items() if name.startswith(prefix)), None)


def test_packer_path_builds_the_same_image(packer_build: BackgroundBuild, offline_build: CellBuild,
                                           release_mirror, tmp_path: Path) -> None:
    packer = packer_build.wait()
    assert_built_and_catalogued(packer, release_mirror)
    print(f"\ne2e qemu packer build (no boot test): {packer.seconds:.0f} s", file=sys.stderr)
    assert "packer build" in packer.log.read_text()
    assert not (packer.cell_dir / "boot-test.json").exists()  # boot_test: false, as the matrix says
    if offline_build.result is None or offline_build.result.returncode != 0:
        pytest.fail(offline_build.failure(), pytrace=False)

    # Same cell, same build key: the builder is not part of it.
    packer_record = json.loads(run_cli("images", "list", "--cloud", "local", "--output", "json", env=packer.env,
                                       timeout=120).stdout)[0]
    offline_record = json.loads(run_cli("images", "list", "--cloud", "local", "--output", "json",
                                        env=offline_build.env, timeout=120).stdout)[0]
    assert packer_record["build_key"] == offline_record["build_key"]

    trees = {b.builder: image_tree(b.image(), tmp_path / b.builder) for b in (packer, offline_build)}
    assert packages(trees["packer"]) == packages(trees["offline"])
    manifests = {name: tree_manifest(root) for name, root in trees.items()}
    assert enabled_units(manifests["packer"]) == enabled_units(manifests["offline"])
    assert {"etc/systemd/system/multi-user.target.wants/containerd.service",
            "etc/systemd/system/multi-user.target.wants/kubelet.service"} <= enabled_units(manifests["offline"])
    differing = sorted(name for name in set(manifests["packer"]) | set(manifests["offline"])
                       if manifests["packer"].get(name) != manifests["offline"].get(name))
    unexplained = [f"{name}: packer {manifests['packer'].get(name, 'absent')}, "
                   f"offline {manifests['offline'].get(name, 'absent')}" for name in differing if not allowed(name)]
    print(f"\nimages differ in {len(differing)} allowed paths: {differing}", file=sys.stderr)
    assert unexplained == []
    release = {name: [line for line in (root / "etc/imagebuilder-release").read_text().splitlines()
                      if not line.startswith(RELEASE_LINES_PER_BUILD)] for name, root in trees.items()}
    assert release["packer"] == release["offline"] and any("BUILD_KEY" in line for line in release["offline"])
    for tree in ("usr/local/bin", "opt/cni/bin"):
        assert not [name for name in differing if name.startswith(tree)]

    # The Packer image's SBOM was gathered in the guest and downloaded: it validates, names the runtime and
    # Kubernetes, lists exactly the image's dpkg packages, its digest is the metadata's, and its provenance verifies.
    assert (packer.cell_dir / "sbom-input.txt").is_file()
    shown = run_cli("images", "sbom", packer_record["image_id"], env=packer.env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(shown.stdout) is None
    packer_sbom = json.loads(shown.stdout)
    assert {"containerd", "kubelet", "kubeadm"} <= {c["name"] for c in packer_sbom["components"]}
    assert {k.split(":")[0]: v for k, v in sbom.dpkg_versions(packer_sbom).items()} == packages(trees["packer"])
    assert packer_record["metadata"]["imagebuilder-sbom-sha256"] == hashlib.sha256(shown.stdout.encode()).hexdigest()
    verified = run_cli("images", "verify", packer_record["image_id"], "--key", str(packer.work / "signing.pub"),
                       env=packer.env, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
