"""The pinned versions file: per Kubernetes minor, every component with its sha256."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ARCHES: tuple[str, ...] = ("amd64", "arm64")
Arch = Literal["amd64", "arm64"]

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


class MinorPins(_Strict):
    pause: str
    components: dict[str, Component]

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
            result[file_name] = Download(url=f"{base}/{pinned.path_for(arch)}", sha256=pinned.sha256[arch])
    return result


def load_versions(path: Path) -> VersionsLock:
    """Load the lock file; errors are reported by imagebuilder.config's loader."""
    from imagebuilder.yamlsource import load_model

    return load_model(path, VersionsLock)
