"""The pinned versions file: per Kubernetes minor, every component with its sha256."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imagebuilder.errors import UserError

ARCHES: tuple[str, ...] = ("amd64", "arm64", "ppc64le")
Arch = Literal["amd64", "arm64", "ppc64le"]

# The one place where the upstream release sites are written down.
UPSTREAM_MIRRORS: dict[str, str] = {
    "kubernetes": "https://dl.k8s.io/release",
    "containerd": "https://github.com/containerd/containerd/releases/download",
    "runc": "https://github.com/opencontainers/runc/releases/download",
    "crictl": "https://github.com/kubernetes-sigs/cri-tools/releases/download",
    "cni_plugins": "https://github.com/containernetworking/plugins/releases/download",
}
COMPONENTS: tuple[str, ...] = tuple(UPSTREAM_MIRRORS)

# The upstream download layout: each component's files, as paths under its mirror base URL.
# {version} is the component's version (no leading v), {arch} stays for path_for().
# `imagebuilder versions update` uses it to write the entries of a new minor.
UPSTREAM_FILES: dict[str, dict[str, str]] = {
    "kubernetes": {name: "v{version}/bin/linux/{arch}/" + name for name in ("kubeadm", "kubelet", "kubectl")},
    "containerd": {"containerd": "v{version}/containerd-{version}-linux-{arch}.tar.gz"},
    "runc": {"runc": "v{version}/runc.{arch}"},
    "crictl": {"crictl": "v{version}/crictl-v{version}-linux-{arch}.tar.gz"},
    "cni_plugins": {"cni_plugins": "v{version}/cni-plugins-linux-{arch}-v{version}.tgz"},
}

DEFAULT_VERSIONS_FILE = "versions.lock.yaml"

# The registry kubeadm pulls from; matrix.yaml `mirrors: {registry: HOST[:PORT][/PATH]}` pulls from a
# mirror instead, and the images are still tagged under these canonical names so kubeadm finds them.
UPSTREAM_REGISTRY = "registry.k8s.io"
# What `kubeadm config images list` names for a minor (repository paths under the registry).
KUBEADM_IMAGES: tuple[str, ...] = (
    "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "pause", "etcd", "coredns/coredns",
)
# The images whose tag is the Kubernetes version (v1.35.1); the others are pinned on their own.
KUBERNETES_TAGGED_IMAGES: tuple[str, ...] = KUBEADM_IMAGES[:4]
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PinnedFile(_Strict):
    path: str = Field(description="path under the component's mirror base URL; {arch} is replaced")
    sha256: dict[Arch, str]

    def path_for(self, arch: str) -> str:
        return self.path.replace("{arch}", arch)


class Component(_Strict):
    version: str
    files: dict[str, PinnedFile]


class PinnedImage(_Strict):
    tag: str
    # None: not pinned yet. `imagebuilder versions update` fills it from the registry; the roles refuse
    # to pull an image without a digest unless imagebuilder_images_allow_unpinned is set.
    digest: str | None = Field(None, pattern=DIGEST_PATTERN)


class MinorPins(_Strict):
    pause: str
    components: dict[str, Component]
    # Pre-pulled into containerd at build time, by repository path under UPSTREAM_REGISTRY.
    images: dict[str, PinnedImage] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _pause_tag_matches(self) -> "MinorPins":
        image = self.images.get("pause")
        if image is not None and image.tag != self.pause:
            raise ValueError(f"images.pause.tag {image.tag} differs from pause {self.pause}: make them the same")
        return self

    @property
    def kubernetes_version(self) -> str:
        return self.components["kubernetes"].version

    def component_versions(self) -> dict[str, str]:
        return {name: comp.version for name, comp in self.components.items()}


class VersionsLock(_Strict):
    schema_: int = Field(1, alias="schema")
    minors: dict[str, MinorPins]


class Download(_Strict):
    url: str
    sha256: str


def downloads_for(pins: MinorPins, arch: str, mirrors: dict[str, str]) -> dict[str, Download]:
    """Every file of a minor for one arch, as mirror URL plus pinned sum."""
    result: dict[str, Download] = {}
    for component_name, component in pins.components.items():
        base = mirrors.get(component_name, UPSTREAM_MIRRORS[component_name]).rstrip("/")
        for file_name, pinned in component.files.items():
            if arch not in pinned.sha256:
                raise UserError(f"versions.lock.yaml: {component_name} {component.version} {file_name}: no {arch} "
                                f"sha256 pinned | fix: imagebuilder versions update (it pins every arch)")
            result[file_name] = Download(url=f"{base}/{pinned.path_for(arch)}", sha256=pinned.sha256[arch])
    return result


def image_reference(path: str, registry: str = UPSTREAM_REGISTRY) -> str:
    """`registry/path`, the name an image is pulled or tagged under."""
    return f"{registry.rstrip('/')}/{path}"


def images_for(pins: MinorPins, registry: str | None = None) -> list[dict[str, str | None]]:
    """The imagebuilder_images variable: each pinned image's canonical name, tag, digest and pull source."""
    source = registry_host(registry) if registry else UPSTREAM_REGISTRY
    return [
        {"name": image_reference(path), "tag": image.tag, "digest": image.digest,
         "source": image_reference(path, source)}
        for path, image in pins.images.items()
    ]


def registry_host(mirror: str) -> str:
    """`http://10.0.2.2:5000/k8s` -> `10.0.2.2:5000/k8s`: the scheme only says how to connect."""
    return mirror.split("://", 1)[-1].rstrip("/")


def registry_plain_http(mirror: str | None) -> bool:
    """Plain HTTP for an http:// mirror and for a loopback host without a scheme (as Docker and containerd do)."""
    if not mirror:
        return False
    if "://" in mirror:
        return mirror.startswith("http://")
    host = mirror.split("/", 1)[0].rsplit(":", 1)[0] if not mirror.startswith("[") else mirror[1:].split("]", 1)[0]
    return host in ("localhost", "127.0.0.1", "::1")


def load_versions(path: Path) -> VersionsLock:
    """Load the lock file; errors are reported by imagebuilder.config's loader."""
    from imagebuilder.yamlsource import load_model

    return load_model(path, VersionsLock)
