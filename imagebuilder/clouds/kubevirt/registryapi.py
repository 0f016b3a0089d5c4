"""A registry's HTTP API v2 (the OCI distribution spec), as the kubevirt store and push use it.

Credentials come from the environment (IMAGEBUILDER_REGISTRY_USERNAME and
IMAGEBUILDER_REGISTRY_PASSWORD) or containers' auth.json: $REGISTRY_AUTH_FILE when set, else
$XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json and docker's config.json
(what `podman login`, `buildah login` and `docker login` write; an entry's `auth` only, credential
helpers are not run). They are sent as the registry's challenge asks: Basic, or for a Bearer token
from its token service. Never logged, never written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests
import urllib3

from imagebuilder.clouds import CloudError
from imagebuilder.textline import one_line

USERNAME_ENV = "IMAGEBUILDER_REGISTRY_USERNAME"
PASSWORD_ENV = "IMAGEBUILDER_REGISTRY_PASSWORD"
AUTH_FILE_ENV = "REGISTRY_AUTH_FILE"
TIMEOUT = (10.0, 300.0)  # connect, read: a blob upload's answer comes after its last byte
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def auth_files() -> list[Path]:
    """Where containers' credentials are read, in order (containers-auth.json(5))."""
    if os.environ.get(AUTH_FILE_ENV):
        return [Path(os.environ[AUTH_FILE_ENV])]
    home = Path.home()
    found = [home / ".config" / "containers" / "auth.json"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        found.insert(0, Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    found.append(Path(os.environ.get("DOCKER_CONFIG", home / ".docker")) / "config.json")
    return found


def credentials(repository: str) -> tuple[str, str] | None:
    """(user, password) for host/path: the environment's, else the most specific auth.json entry."""
    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if user and password:
        return user, password
    for path in auth_files():
        try:
            auths = json.loads(path.read_text()).get("auths", {})
        except (OSError, ValueError, AttributeError):
            continue
        entries = {re.sub(r"^https?://", "", key).removesuffix("/v1/").rstrip("/"): value
                   for key, value in auths.items() if isinstance(value, dict) and value.get("auth")}
        matching = [key for key in entries if repository == key or repository.startswith(key + "/")]
        if matching:
            decoded = base64.b64decode(entries[max(matching, key=len)]["auth"]).decode()
            name, _, secret = decoded.partition(":")
            return name, secret
    return None


@dataclass
class Registry:
    """One repository of one registry: `host[:port]/path`."""

    repository: str
    tls_verify: bool = True
    session: requests.Session = field(default_factory=requests.Session)
    _scheme: str | None = None
    _tokens: dict[str, str] = field(default_factory=dict)  # scope -> Bearer token
    _token: str | None = None  # the last one granted, sent first
    _basic: tuple[str, str] | None = None

    @property
    def host(self) -> str:
        return self.repository.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repository.split("/", 1)[1]

    def fail(self, what: str, fix: str) -> CloudError:
        return CloudError(f"kubevirt {self.repository}: {what} | fix: {fix}")

    # -- transport -----------------------------------------------------------------------

    def _base(self) -> str:
        """https, or with tls_verify false http where the registry does not speak TLS."""
        if self._scheme is None:
            self._scheme = "https"
            if not self.tls_verify:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                        self.session.get(f"https://{self.host}/v2/", verify=False, timeout=TIMEOUT)
                except requests.exceptions.SSLError:
                    self._scheme = "http"
                except requests.RequestException:
                    pass  # the request proper says what is wrong
        return f"{self._scheme}://{self.host}"

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), body: IO[bytes] | bytes | None = None,
                headers: dict[str, str] | None = None, what: str = "") -> requests.Response:
        """The response of `method path` (a path under /v2/ or an upload URL), authenticated as the
        registry's challenge asks; a status outside `ok` is a CloudError naming `what`."""
        url = path if path.startswith(("http://", "https://")) else self._base() + path
        response = self._send(method, url, body, headers or {})
        if response.status_code == 401 and self._authenticate(response):
            if body is not None and not isinstance(body, bytes):
                body.seek(0)
            response = self._send(method, url, body, headers or {})
        if response.status_code not in ok:
            raise self._error(response, what or f"{method} {path}")
        return response

    def _send(self, method: str, url: str, body: IO[bytes] | bytes | None,
              headers: dict[str, str]) -> requests.Response:
        headers = dict(headers)
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            with warnings.catch_warnings():
                if not self.tls_verify:  # asked for: say nothing per request
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                return self.session.request(method, url, data=body, headers=headers, timeout=TIMEOUT,
                                            verify=self.tls_verify, auth=None if self._token else self._basic)
        except requests.exceptions.SSLError as error:
            raise self.fail(f"TLS to {self.host} failed ({one_line(error)[:200]})",
                            "give the registry a certificate the system trusts (or REQUESTS_CA_BUNDLE), or set "
                            "clouds.kubevirt.tls_verify: false for a plain-http registry") from None
        except requests.RequestException as error:
            raise self.fail(f"cannot reach {self.host} ({type(error).__name__})",
                            "check clouds.kubevirt.registry and that the registry is up") from None

    def _authenticate(self, response: requests.Response) -> bool:
        """Credentials for the challenge; False when there are none to give (the 401 stands)."""
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        found = credentials(self.repository)
        if scheme == "basic":
            if found is None or self._basic == found:
                return False
            self._basic, self._token = found, None
            return True
        if scheme != "bearer":
            return False
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        scope = params.get("scope", "")
        if scope in self._tokens and self._tokens[scope] != self._token:
            self._token = self._tokens[scope]
            return True
        query = {key: params[key] for key in ("service", "scope") if params.get(key)}
        try:
            granted = self.session.get(params.get("realm", ""), params=query, auth=found, timeout=TIMEOUT,
                                       verify=self.tls_verify)
        except requests.RequestException as error:
            raise self.fail(f"its token service cannot be reached ({type(error).__name__})",
                            "check the registry's auth configuration") from None
        if granted.status_code != 200:
            return False
        token = granted.json().get("token") or granted.json().get("access_token")
        if not token or token == self._token:
            return False
        self._tokens[scope], self._token = token, token
        return True

    def _error(self, response: requests.Response, what: str) -> CloudError:
        detail = _detail(response)
        if response.status_code in (401, 403):
            return self.fail(f"{what}: {response.status_code} {detail}",
                             f"log in (podman login {self.host}, or {USERNAME_ENV}/{PASSWORD_ENV}) with "
                             "rights on this repository")
        return self.fail(f"{what}: {response.status_code} {detail}", "see the registry's log")

    # -- reading -------------------------------------------------------------------------

    def tags(self) -> list[str]:
        """Every tag of the repository (following `Link` pages); [] when the repository does not exist."""
        found: list[str] = []
        path: str | None = f"/v2/{self.name}/tags/list?n=1000"
        while path:
            response = self.request("GET", path, ok=(200, 404), what="list tags")
            if response.status_code == 404:
                return []
            found.extend(response.json().get("tags") or [])
            next_link = response.links.get("next", {}).get("url")
            path = next_link if next_link and next_link != path else None
        return found

    def manifest(self, reference: str) -> tuple[str, dict[str, Any], bytes] | None:
        """(digest, manifest, its bytes) of a tag or digest; None when there is none."""
        response = self.request("GET", f"/v2/{self.name}/manifests/{reference}", ok=(200, 404),
                                headers={"Accept": MANIFEST_ACCEPT}, what=f"read manifest {reference}")
        if response.status_code == 404:
            return None
        data = response.content
        digest = response.headers.get("Docker-Content-Digest") or f"sha256:{hashlib.sha256(data).hexdigest()}"
        return digest, json.loads(data), data

    def digest_of(self, reference: str) -> str | None:
        response = self.request("HEAD", f"/v2/{self.name}/manifests/{reference}", ok=(200, 404),
                                headers={"Accept": MANIFEST_ACCEPT}, what=f"read manifest {reference}")
        return response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None

    def blob(self, digest: str) -> bytes:
        return self.request("GET", f"/v2/{self.name}/blobs/{digest}", what=f"read blob {digest}").content

    # -- writing -------------------------------------------------------------------------

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        """The manifest under a tag (or its digest); the digest the registry answers."""
        response = self.request("PUT", f"/v2/{self.name}/manifests/{reference}", ok=(201,), body=data,
                                headers={"Content-Type": media_type}, what=f"push manifest {reference}")
        return response.headers.get("Docker-Content-Digest") or f"sha256:{hashlib.sha256(data).hexdigest()}"

    def delete_manifest(self, digest: str) -> bool:
        """False when the registry has no such manifest; a CloudError with the reason when it refuses."""
        response = self.request("DELETE", f"/v2/{self.name}/manifests/{digest}", ok=(202, 200, 404, 405),
                                what=f"delete {digest}")
        if response.status_code == 405:
            raise CloudError(f"kubevirt {self.repository}@{digest}: kept: the registry refuses deletes "
                             f"(405 {_detail(response)}) | fix: enable deletion in the registry (distribution: "
                             "storage.delete.enabled: true) or delete it there; then `registry garbage-collect` "
                             "frees its blobs")
        return response.status_code != 404

    def push_blob(self, digest: str, size: int, stream: IO[bytes]) -> None:
        """The blob, unless the registry has it already (one monolithic upload)."""
        if self.request("HEAD", f"/v2/{self.name}/blobs/{digest}", ok=(200, 404), what=f"check blob {digest}"
                        ).status_code == 200:
            return
        started = self.request("POST", f"/v2/{self.name}/blobs/uploads/", ok=(202,), what="start an upload")
        location = started.headers["Location"]
        if not location.startswith(("http://", "https://")):
            location = self._base() + location
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        self.request("PUT", location, ok=(201,), body=stream, what=f"upload blob {digest}",
                     headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})

    def push_archive(self, archive: Path, tag: str) -> str:
        """An oci-archive's image (its index's one manifest) pushed under `tag`; its manifest digest."""
        with tarfile.open(archive, "r:") as tar:
            index = json.loads(_member(tar, "index.json", archive).read())
            descriptor = index["manifests"][0]
            manifest_data = _member(tar, _blob_path(descriptor["digest"]), archive).read()
            manifest = json.loads(manifest_data)
            for blob in (manifest["config"], *manifest["layers"]):
                self.push_blob(blob["digest"], int(blob["size"]), _member(tar, _blob_path(blob["digest"]), archive))
            pushed = self.put_manifest(tag, manifest_data, descriptor["mediaType"])
        if pushed != descriptor["digest"]:
            raise self.fail(f"pushed {tag} as {pushed}, not the archive's {descriptor['digest']}",
                            "the registry rewrote the manifest: push to an OCI-conformant registry")
        return pushed


def _detail(response: requests.Response) -> str:
    """The registry's error codes and messages (the distribution spec's `errors`), one line."""
    try:
        errors = response.json().get("errors") or []
        detail = "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors)
    except (ValueError, AttributeError):
        detail = response.text[:200]
    return one_line(detail)[:300] or response.reason or str(response.status_code)


def _blob_path(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def _member(tar: tarfile.TarFile, name: str, archive: Path) -> IO[bytes]:
    try:
        stream = tar.extractfile(name)
    except KeyError:
        stream = None
    if stream is None:
        raise CloudError(f"{archive}: no {name} in this oci-archive | fix: build the cell again")
    return stream

