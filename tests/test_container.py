"""The Containerfile builds the image deploy/cronjob.yaml runs, with buildah (vfs storage).

No registry of container images answers here, so the base image is made locally: a Debian 12
tree from mmdebstrap with python3 and its venv module, imported with buildah and passed as
the BASE build argument. pip inside the build reaches PyPI. `podman run` is refused on this
machine, so the image's root filesystem is mounted and entered with chroot: read-only, as the
image's user, with a fresh empty cache directory, as the CronJob runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import DEBIAN_MIRROR, DEBIAN_SUITE, test_cache_dir

REPO = Path(__file__).resolve().parents[1]
CRONJOB = REPO / "deploy" / "cronjob.yaml"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "passwd", "ca-certificates")
IMAGE = "localhost/imagebuilder:test"  # + "-" and the digest of the build context

BUILD_COMMAND = "podman build -t REGISTRY/imagebuilder:VERSION -f Containerfile ."
CAN_BUILD = os.geteuid() == 0 and all(shutil.which(t) for t in ("buildah", "mmdebstrap", "unshare"))
needs_buildah = pytest.mark.skipif(
    not CAN_BUILD,
    reason="needs root, buildah, mmdebstrap and unshare (.ci/apt-packages.txt)")


def test_the_cronjob_and_the_readme_say_how_to_build_and_push_the_image() -> None:
    cronjob_text = CRONJOB.read_text()
    for text in (cronjob_text, (REPO / "README.md").read_text(), (REPO / "Containerfile").read_text()):
        assert BUILD_COMMAND in text
    container = yaml.safe_load(cronjob_text)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].rsplit(":", 1)[0].endswith("/imagebuilder")


# Certificate authorities this machine trusts beyond Debian's (a site's TLS proxy): the test's
# base image trusts them too, as a site's own base image would, so pip in the build reaches PyPI.
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
PIP_CONF = "[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n"


def base_tarball() -> Path:
    """A Debian 12 minbase tree with python3, as a tarball; built once, then cached."""
    cas = sorted(LOCAL_CAS.glob("*.crt"))
    key_src = json.dumps({"suite": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR, "packages": BASE_PACKAGES,
                          "cas": [hashlib.sha256(ca.read_bytes()).hexdigest() for ca in cas]}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    tarball = test_cache_dir() / f"container-base-{key}.tar"
    if not tarball.exists():
        hooks = []
        if cas:
            hooks = [f"--customize-hook=copy-in {' '.join(map(str, cas))} {LOCAL_CAS}",
                     '--customize-hook=chroot "$1" update-ca-certificates',
                     f'--customize-hook=printf "{PIP_CONF}" > "$1/etc/pip.conf"']
        partial = tarball.with_name(f".{tarball.name}.{os.getpid()}")
        subprocess.run(["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
                        f"--include={','.join(BASE_PACKAGES)}", *hooks, DEBIAN_SUITE, str(partial),
                        f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        partial.rename(tarball)
    return tarball


class Buildah:
    """buildah with the vfs driver and its own storage (cached between runs: layers are reused)."""

    def __init__(self, root: Path) -> None:
        self.flags = ["--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "vfs"]

    def __call__(self, *args: str) -> str:
        result = subprocess.run(["buildah", *self.flags, *args], capture_output=True, text=True)
        assert result.returncode == 0, f"buildah {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout.strip()

    def has_image(self, name: str) -> bool:
        return subprocess.run(["buildah", *self.flags, "inspect", "--type", "image", name],
                              capture_output=True).returncode == 0

    def import_tarball(self, tarball: Path, name: str) -> None:
        if self.has_image(name):
            return
        container = self("from", "scratch")
        try:
            self("add", container, str(tarball), "/")
            self("commit", "--quiet", container, name)
        finally:
            self("rm", container)


def context_key() -> str:
    """A digest of what the Containerfile reads: an image built from the same context is reused."""
    digest = hashlib.sha256()
    sources = [REPO / "Containerfile", REPO / ".containerignore", REPO / "pyproject.toml", REPO / "README.md"]
    for directory in ("imagebuilder", "packer", "ansible"):
        sources += sorted(p for p in (REPO / directory).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in sources:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_image() -> tuple[Buildah, dict, str]:
    """The image from the Containerfile, built on the base tarball (reused while the context is the same)."""
    try:
        tarball = base_tarball()
    except subprocess.CalledProcessError as error:
        pytest.fail(f"mmdebstrap failed: {error.stderr.decode()[-2000:]}")
    buildah = Buildah(test_cache_dir() / "buildah")
    base = f"localhost/imagebuilder-test-base:{tarball.stem.rsplit('-', 1)[-1]}"
    image = f"{IMAGE}-{context_key()}"
    if not buildah.has_image(image):
        # This storage is the test's own; vfs keeps whole copies, so only the base stays.
        buildah("rm", "--all")
        for stale in buildah("images", "--noheading", "--format", "{{.Name}}:{{.Tag}}").split():
            if stale.startswith(("localhost/imagebuilder:", "localhost/imagebuilder-test-base:")) and stale != base:
                buildah("rmi", "--force", stale)
        buildah("rmi", "--prune")
        buildah.import_tarball(tarball, base)
        buildah("bud", "--isolation", "chroot", "--build-arg", f"BASE={base}", "-f", str(REPO / "Containerfile"),
                "-t", image, str(REPO))
    config = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    return buildah, config, image


_BUILD: list[Future] = []
_BUILD_LOCK = threading.Lock()


def start_image_build() -> Future:
    """The session's one image build, in a background thread: tests/conftest.py starts it with the
    first test, so the rest of the suite runs while it builds (mostly pip waiting on PyPI)."""
    with _BUILD_LOCK:
        if not _BUILD:
            _BUILD.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="container-build").submit(build_image))
        return _BUILD[0]


@pytest.fixture(scope="module")
def built_image() -> tuple[Buildah, dict, str]:
    return start_image_build().result()


def run_in_image(built: tuple[Buildah, dict, str], args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """The entrypoint with args, as the image's user, on the image's root mounted read-only
    with an empty writable directory at the cache path (the CronJob's emptyDir)."""
    buildah, config, image = built
    container = buildah("from", image)
    try:
        mounted = buildah("mount", container)
        env = dict(item.split("=", 1) for item in config["Env"])
        cache = env["IMAGEBUILDER_CACHE"]
        root = tmp_path / "root"
        root.mkdir()
        command = " ".join(["chroot", f"--userspec={config['User']}", str(root), "/usr/bin/env", "-i",
                            *(f"'{k}={v}'" for k, v in env.items()),
                            "sh", "-c", f"'cd {config.get('WorkingDir') or '/'} && exec \"$@\"'", "entry",
                            *(f"'{a}'" for a in [*config["Entrypoint"], *args])])
        script = (f"mount --bind {mounted} {root} && mount -o remount,bind,ro {root} && "
                  f"mount -t tmpfs -o mode=0700,uid={config['User'].split(':')[0]} cache {root}{cache} && "
                  f"mount -t proc proc {root}/proc && {command}")
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True, timeout=300)
    finally:
        buildah("umount", container)
        buildah("rm", container)


@pytest.mark.slow
@needs_buildah
def test_the_image_runs_imagebuilder_as_a_non_root_user(built_image: tuple[Buildah, dict, str],
                                                         tmp_path: Path) -> None:
    _, config, _ = built_image
    assert config["Entrypoint"] == ["imagebuilder"]
    user = config["User"]
    assert user.split(":")[0] not in ("", "0", "root")
    cronjob = yaml.safe_load(CRONJOB.read_text())["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert str(cronjob["securityContext"]["runAsUser"]) == user.split(":")[0]  # the CronJob runs the same user

    version = run_in_image(built_image, ["--version"], tmp_path)
    assert version.returncode == 0, version.stdout + version.stderr
    import imagebuilder

    assert version.stdout.strip() == f"imagebuilder, version {imagebuilder.__version__}"


@pytest.mark.slow
@needs_buildah
def test_a_prune_runs_on_a_read_only_root(built_image: tuple[Buildah, dict, str], tmp_path: Path) -> None:
    """The CronJob's command over the local catalogue: caches, locks and temporary files all
    go to the one writable directory, nothing to the read-only root."""
    result = run_in_image(built_image, ["prune", "--cloud", "local", "--output", "json"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["applied"] is False and report["summary"]["images"] == 0
    assert "Read-only file system" not in result.stderr
