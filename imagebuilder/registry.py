"""The digest of an image tag, asked of an OCI / Docker registry (distribution API v2).

`HEAD /v2/<name>/manifests/<tag>` with every manifest type accepted; the registry answers with the
`Docker-Content-Digest` of what it would serve: the image index of a multi-arch image, which is
what kubeadm's images are and what containerd pulls by digest. An anonymous bearer token is fetched
when the registry asks for one (registry.k8s.io redirects to registries that do).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from imagebuilder.errors import UserError
from imagebuilder.versions import DIGEST_PATTERN, registry_host, registry_plain_http

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
USER_AGENT = "imagebuilder-versions-update"
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(UserError):
    """One line naming the image and what the registry answered."""


@dataclass(frozen=True)
class Registry:
    """`registry.k8s.io`, `127.0.0.1:5000` or `http://10.0.2.2:5000/k8s` (a path prefixes every repository)."""

    address: str

    @property
    def base_url(self) -> str:
        host, _, _ = registry_host(self.address).partition("/")
        return f"{'http' if registry_plain_http(self.address) else 'https'}://{host}"

    def repository(self, path: str) -> str:
        _, _, prefix = registry_host(self.address).partition("/")
        return f"{prefix.strip('/')}/{path}" if prefix else path

    def manifest_url(self, path: str, tag: str) -> str:
        return f"{self.base_url}/v2/{self.repository(path)}/manifests/{urllib.parse.quote(tag)}"


class _KeepMethod(urllib.request.HTTPRedirectHandler):
    """Follow redirects with the same method (urllib turns a redirected HEAD into a GET)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()
        return new


_OPENER = urllib.request.build_opener(_KeepMethod)


def _head(url: str, timeout: float, token: str | None = None) -> tuple[int, dict[str, str]]:
    headers = {"Accept": ", ".join(MANIFEST_TYPES), "User-Agent": USER_AGENT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers, method="HEAD")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items())
    except urllib.error.HTTPError as error:
        status, answer = error.code, dict(error.headers.items())
        error.close()
        return status, answer


def _anonymous_token(challenge: str, url: str, timeout: float) -> str:
    """The bearer token a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge asks for."""
    params = dict(_CHALLENGE.findall(challenge))
    realm = params.pop("realm", "")
    if not challenge.lower().startswith("bearer") or not realm.startswith(("https://", "http://")):
        raise RegistryError(f"{url}: the registry wants credentials ({challenge[:80]}); "
                            "only anonymous pulls are supported")
    token_url = f"{realm}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(token_url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read(64 * 1024))
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise RegistryError(f"{token_url}: no anonymous token ({getattr(error, 'reason', error)})") from None
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str):
        raise RegistryError(f"{token_url}: the answer has no token")
    return token


def manifest_digest(registry: Registry, path: str, tag: str, timeout: float = 30.0) -> str:
    """The digest the registry serves for `path:tag` (sha256:...)."""
    url = registry.manifest_url(path, tag)
    try:
        status, headers = _head(url, timeout)
        if status == 401:
            token = _anonymous_token(_header(headers, "WWW-Authenticate"), url, timeout)
            status, headers = _head(url, timeout, token)
    except (urllib.error.URLError, OSError) as error:
        raise RegistryError(f"{url}: {getattr(error, 'reason', None) or error}") from None
    if status == 404:
        raise RegistryError(f"{url}: HTTP 404, the registry has no {path}:{tag}; check the tag")
    if status != 200:
        raise RegistryError(f"{url}: HTTP {status}")
    digest = _header(headers, "Docker-Content-Digest")
    if not re.fullmatch(DIGEST_PATTERN, digest):
        raise RegistryError(f"{url}: no sha256 Docker-Content-Digest in the answer (got {digest[:80]!r})")
    return digest


def _header(headers: dict[str, str], name: str) -> str:
    return next((value for key, value in headers.items() if key.lower() == name.lower()), "")
