"""`imagebuilder versions update` pins the images kubeadm needs by tag and digest, asking a real registry
(Debian's docker-registry on 127.0.0.1, holding images built here with buildah)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from imagebuilder.registry import Registry, RegistryError, manifest_digest
from imagebuilder.versions import KUBEADM_IMAGES, KUBERNETES_TAGGED_IMAGES, VersionsLock, images_for
from imagebuilder.versions_update import VersionsUpdateError, update_versions
from registry import FIXTURE_COREDNS_TAG, FIXTURE_ETCD_TAG, kubeadm_images, push_images, serve_registry
from test_versions_update import Mirror, Release, load, mirror, release  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A registry holding kubeadm's images for 1.31.5 (the release fixture's new patch)."""
    root = tmp_path_factory.mktemp("registry")
    with serve_registry(root / "registry") as address:
        yield address, push_images(address, kubeadm_images("1.31.5", pause="3.10"), root / "buildah")


def with_unpinned_images(release: Release) -> None:
    """The 1.31 minor pins kubeadm's images for 1.31.4, without digests (as the shipped lock may)."""
    data = yaml.safe_load(release.lock_path.read_text())
    data["minors"]["1.31"]["images"] = {path: {"tag": tag, "digest": None}
                                        for path, tag in kubeadm_images("1.31.4", pause="3.10").items()}
    release.lock_path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_digest_is_what_the_registry_serves(registry) -> None:
    address, digests = registry
    for path, tag in kubeadm_images("1.31.5", pause="3.10").items():
        assert manifest_digest(Registry(address), path, tag, timeout=5) == digests[path]


def test_update_fills_tags_and_digests(release: Release, mirror: Mirror, registry) -> None:
    address, digests = registry
    with_unpinned_images(release)
    report = update_versions(release.lock_path, mirrors={**mirror.mirrors, "registry": address}, timeout=5)
    assert report.written
    images = load(release.lock_path).minors["1.31"].images
    assert list(images) == list(KUBEADM_IMAGES)
    for path in KUBERNETES_TAGGED_IMAGES:
        assert images[path].tag == "v1.31.5"  # moved with the Kubernetes patch
    assert images["pause"].tag == "3.10"
    assert images["etcd"].tag == FIXTURE_ETCD_TAG and images["coredns/coredns"].tag == FIXTURE_COREDNS_TAG
    assert {path: image.digest for path, image in images.items()} == digests
    assert "1.31: image kube-apiserver:v1.31.5 sha256 (new) -> " in "\n".join(report.lines())
    assert load(release.lock_path).minors["1.30"].images == {}  # a minor without images stays so

    again = update_versions(release.lock_path, mirrors={**mirror.mirrors, "registry": address}, timeout=5)
    assert not again.changed


def test_changed_digest_under_the_same_tag_is_flagged(release: Release, mirror: Mirror, registry) -> None:
    address, digests = registry
    with_unpinned_images(release)
    update_versions(release.lock_path, mirrors={**mirror.mirrors, "registry": address}, timeout=5)
    data = yaml.safe_load(release.lock_path.read_text())
    data["minors"]["1.31"]["images"]["etcd"]["digest"] = "sha256:" + "0" * 64
    release.lock_path.write_text(yaml.safe_dump(data, sort_keys=False))
    report = update_versions(release.lock_path, mirrors={**mirror.mirrors, "registry": address}, timeout=5)
    assert [change.item for change in report.suspicious] == [f"image etcd:{FIXTURE_ETCD_TAG}"]
    assert load(release.lock_path).minors["1.31"].images["etcd"].digest == digests["etcd"]


def test_missing_tag_is_one_line_and_leaves_the_file(release: Release, mirror: Mirror, registry) -> None:
    address, _ = registry
    with_unpinned_images(release)
    data = yaml.safe_load(release.lock_path.read_text())
    data["minors"]["1.31"]["images"]["etcd"]["tag"] = "9.9.9-0"
    release.lock_path.write_text(yaml.safe_dump(data, sort_keys=False))
    before = release.lock_path.read_bytes()
    with pytest.raises(VersionsUpdateError) as error:
        update_versions(release.lock_path, mirrors={**mirror.mirrors, "registry": address}, timeout=5)
    assert str(error.value).startswith(f"http://{address}/v2/etcd/manifests/9.9.9-0: HTTP 404")
    assert "\n" not in str(error.value)
    assert release.lock_path.read_bytes() == before


def test_unreachable_registry_is_one_line() -> None:
    with pytest.raises(RegistryError, match=r"^http://127\.0\.0\.1:9/v2/pause/manifests/3\.10: "):
        manifest_digest(Registry("127.0.0.1:9"), "pause", "3.10", timeout=2)


def test_registry_addresses() -> None:
    assert Registry("registry.k8s.io").manifest_url("pause", "3.10") == "https://registry.k8s.io/v2/pause/manifests/3.10"
    assert Registry("127.0.0.1:5000").base_url == "http://127.0.0.1:5000"  # loopback: plain HTTP
    assert Registry("http://10.0.2.2:5000/k8s").manifest_url("etcd", "3.5.16-0") == \
        "http://10.0.2.2:5000/v2/k8s/etcd/manifests/3.5.16-0"
    assert Registry("mirror.example:443").base_url == "https://mirror.example:443"


def test_pause_tag_must_match_the_pause_pin() -> None:
    data = yaml.safe_load((REPO / "versions.lock.yaml").read_text())
    data["minors"]["1.35"]["images"]["pause"]["tag"] = "3.9"
    with pytest.raises(ValueError, match="images.pause.tag 3.9 differs from pause 3.10.1"):
        VersionsLock.model_validate(data)


def test_shipped_lock_pins_every_kubeadm_image() -> None:
    lock = VersionsLock.model_validate(yaml.safe_load((REPO / "versions.lock.yaml").read_text()))
    for minor, pins in lock.minors.items():
        assert list(pins.images) == list(KUBEADM_IMAGES), minor
        for path in KUBERNETES_TAGGED_IMAGES:
            assert pins.images[path].tag == f"v{pins.kubernetes_version}", (minor, path)
        assert pins.images["pause"].tag == pins.pause
        mirrored = images_for(pins, "http://10.0.2.2:5000")
        assert mirrored[0] == {"name": "registry.k8s.io/kube-apiserver", "tag": f"v{pins.kubernetes_version}",
                               "digest": pins.images["kube-apiserver"].digest,
                               "source": "10.0.2.2:5000/kube-apiserver"}
