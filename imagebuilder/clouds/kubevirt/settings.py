"""The settings of `clouds.kubevirt` in the matrix: the qemu build's, and the registry its containerDisks go to.

Registry credentials are never settings: they come from the environment
(IMAGEBUILDER_REGISTRY_USERNAME/IMAGEBUILDER_REGISTRY_PASSWORD) or containers' auth.json
(REGISTRY_AUTH_FILE, else the default paths podman/buildah/docker write): registryapi.py.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator

from imagebuilder.clouds.qemu.settings import QemuSettings

# host[:port]/path, as a container image reference names a repository (distribution's grammar: lower
# case path components separated by `.`, `_`, `__` or dashes). The host is required: no docker.io guessed.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"^(?P<host>(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::\d{{1,5}})?)/(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)$")


class KubevirtSettings(QemuSettings):
    # The repository the containerDisks are pushed to, `host[:port]/path` (each image's tag is
    # `<os>-kube-v<version>[-<arch>][-<variant>]-<build key 12>`). Where it is published, not what it is.
    registry: str
    # TLS verified against the system's CAs (REQUESTS_CA_BUNDLE for another); false: a plain-http
    # registry (a local one on 127.0.0.1), or https without verification.
    tls_verify: bool = True
    # What prune takes for "in use". The registry cannot see the KubeVirt clusters that pull these
    # disks (a VM pulls its containerDisk again when it restarts or migrates). "unknown": nothing
    # can be called unused, so prune keeps every image and says why. "tags": an image is in use while
    # a tag that is not imagebuilder's own (`:stable`, `:latest`) points to it, unused otherwise:
    # choose it when VMs name the tags you move, not imagebuilder's tags or digests.
    in_use_check: Literal["unknown", "tags"] = "unknown"

    OUTSIDE_BUILD_KEY = QemuSettings.OUTSIDE_BUILD_KEY | frozenset({"registry", "tls_verify", "in_use_check"})

    @field_validator("registry")
    @classmethod
    def _repository(cls, value: str) -> str:
        if not REPOSITORY.match(value):
            raise ValueError(f"'{value}' is not a registry repository | fix: write host[:port]/path, e.g. "
                             "registry.example.com/capi/node (lower case path, no tag: each image has its own)")
        return value
