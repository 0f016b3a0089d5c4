"""Shared fixtures: the fixture release mirror and a cached Debian 12 root filesystem."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from mirror import (  # noqa: E402
    DEFAULT_FIXTURE_VERSIONS,
    FixtureFile,
    build_fixture_release,
    downloads_for_fixture,
    mirrors_for,
    serve_directory,
)
from registry import images_lock, kubeadm_images, push_images, serve_registry  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROLES = REPO / "ansible" / "roles"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("IMAGEBUILDER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the chroot needs besides the role packages: Ansible's interpreter and an init system.
DEBIAN_ROOTFS_BASE_PACKAGES = ("python3", "systemd", "systemd-sysv", "dbus", "udev", "kmod", "procps")


def test_cache_dir() -> Path:
    """Cache shared by one test run and the next: $IMAGEBUILDER_TEST_CACHE or .cache/tests."""
    path = Path(os.environ.get("IMAGEBUILDER_TEST_CACHE", REPO / ".cache" / "tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


test_cache_dir.__test__ = False  # a helper, not a test, even when imported into a test module


def process_alive(pid: int) -> bool:
    """Whether a process the test started still runs (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@dataclass(frozen=True)
class ReleaseMirror:
    root: Path
    base_url: str
    versions: dict[str, str]
    files: dict[str, FixtureFile]

    @property
    def downloads(self) -> dict[str, dict[str, str]]:
        """The imagebuilder_downloads variable pointing at this mirror."""
        return downloads_for_fixture(self.files, self.base_url)

    @property
    def mirrors(self) -> dict[str, str]:
        return mirrors_for(self.base_url)


@pytest.fixture(scope="session")
def release_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReleaseMirror]:
    """Fixture release files for DEFAULT_FIXTURE_VERSIONS (amd64), served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("release-mirror")
    files = build_fixture_release(root, DEFAULT_FIXTURE_VERSIONS, "amd64")
    with serve_directory(root) as base_url:
        yield ReleaseMirror(root=root, base_url=base_url, versions=dict(DEFAULT_FIXTURE_VERSIONS), files=files)


@dataclass(frozen=True)
class ImageRegistry:
    """Debian's docker-registry on 127.0.0.1 holding fixture images under kubeadm's names."""

    address: str  # 127.0.0.1:PORT, the matrix's `mirrors: {registry: ...}`
    images: dict[str, str]  # path -> tag
    digests: dict[str, str]  # path -> sha256:...

    @property
    def lock(self) -> dict[str, dict[str, str]]:
        """The `images:` entry of a versions.lock.yaml minor pinning these images."""
        return images_lock(self.images, self.digests)

    def ansible_images(self, source: str | None = None) -> list[dict[str, str]]:
        """The imagebuilder_images variable for these images, pulled from ``source`` (this registry)."""
        return [{"name": f"registry.k8s.io/{path}", "tag": tag, "digest": self.digests[path],
                 "source": f"{source or self.address}/{path}"} for path, tag in self.images.items()]


@pytest.fixture(scope="session")
def image_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageRegistry]:
    """kubeadm's images for DEFAULT_FIXTURE_VERSIONS (tiny ones built with buildah) in a local registry."""
    root = tmp_path_factory.mktemp("image-registry")
    images = kubeadm_images(DEFAULT_FIXTURE_VERSIONS["kubernetes"], pause="3.10")
    with serve_registry(root / "registry") as address:
        digests = push_images(address, images, root / "buildah")
        yield ImageRegistry(address=address, images=images, digests=digests)


def role_debian_packages() -> list[str]:
    """Every Debian package the roles install for a qemu cell, read from the role defaults."""
    node = yaml.safe_load((ROLES / "node" / "defaults" / "main.yml").read_text())
    contract = yaml.safe_load((ROLES / "imagebuilder" / "defaults" / "main.yml").read_text())
    return sorted(set(node["node_packages"]["debian"]) | set(contract["imagebuilder_agent_packages"]["debian"]["qemu"]))


def build_debian_rootfs(dest: Path, packages: list[str]) -> None:
    """mmdebstrap a Debian 12 tree into ``dest`` (a directory that must not exist)."""
    include = ",".join(sorted(set(DEBIAN_ROOTFS_BASE_PACKAGES) | set(packages)))
    cmd = [
        "mmdebstrap", "--variant=apt", "--mode=root", "--format=directory",
        f"--include={include}", DEBIAN_SUITE, str(dest),
        f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main",
        f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE}-updates main",
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def debian_rootfs() -> Path:
    """A Debian 12 root filesystem with everything the roles install; built once, then cached.

    Keyed on its inputs (suite, mirror, package list). Read-only: copy it before use
    (``copy_rootfs``).
    """
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is not installed (apt-get install mmdebstrap)")
    try:
        return cached_debian_rootfs()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"mmdebstrap failed: {exc.stderr[-2000:]}")


def cached_debian_rootfs() -> Path:
    """Build (or reuse) the cached Debian 12 tree; raises CalledProcessError if mmdebstrap fails."""
    packages = role_debian_packages()
    key_src = json.dumps(
        {"suite": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR, "base": DEBIAN_ROOTFS_BASE_PACKAGES, "packages": packages},
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache = test_cache_dir() / f"debian-12-rootfs-{key}"
    if (cache / ".complete").exists():
        return cache
    building = cache.with_name(f"{cache.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    started = time.monotonic()
    try:
        build_debian_rootfs(building, packages)
    except subprocess.CalledProcessError:
        shutil.rmtree(building, ignore_errors=True)
        raise
    (building / ".complete").write_text(f"{key_src}\nbuilt in {time.monotonic() - started:.0f}s\n")
    if (cache / ".complete").exists():  # another process won the race
        shutil.rmtree(building, ignore_errors=True)
    else:
        shutil.rmtree(cache, ignore_errors=True)
        building.rename(cache)
    print(f"\ndebian rootfs built in {time.monotonic() - started:.0f}s: {cache}", file=sys.stderr)
    return cache


def copy_rootfs(src: Path, dest: Path) -> Path:
    """A private, writable copy of a cached root filesystem (hard links are not shared)."""
    subprocess.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(dest)], check=True)
    (dest / ".complete").unlink(missing_ok=True)
    return dest


# Tests that start a long background job (the Packer TCG build) run first and those that wait
# for it run last, so the rest of the suite runs while it builds.
STARTS_BACKGROUND_WORK = "packer_started_early"
WAITS_FOR_BACKGROUND_WORK = "packer_build"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        fixtures = getattr(item, "fixturenames", ())
        return 0 if STARTS_BACKGROUND_WORK in fixtures else 2 if WAITS_FOR_BACKGROUND_WORK in fixtures else 1

    items.sort(key=rank)  # stable: the order within each group stays as collected


@pytest.fixture(scope="session", autouse=True)
def container_image_started_early(request: pytest.FixtureRequest) -> None:
    """The Containerfile's image (tests/test_container.py) builds in the background from the first
    test on, when a selected test needs it."""
    if any("built_image" in getattr(item, "fixturenames", ()) for item in request.session.items):
        import test_container

        if test_container.CAN_BUILD:
            test_container.start_image_build()
