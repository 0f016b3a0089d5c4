"""A stand-in for Keystone's identity v3 token API, for `packer validate` of openstack cells.

Packer's openstack builder authenticates while it validates. No emulator of Keystone runs
here without a database and a WSGI stack of its own, so this serves the real paths and
payloads (version discovery, POST /v3/auth/tokens with X-Subject-Token) and nothing else.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _token_body(base: str) -> dict:
    def service(kind: str, name: str, path: str) -> dict:
        return {"type": kind, "name": name, "id": name, "endpoints": [
            {"id": f"{name}-public", "interface": "public", "region": "RegionOne", "region_id": "RegionOne",
             "url": f"{base}{path}"}]}

    domain = {"id": "default", "name": "Default"}
    return {"token": {
        "methods": ["password"],
        "expires_at": "2099-01-01T00:00:00.000000Z",
        "issued_at": "2026-01-01T00:00:00.000000Z",
        "user": {"id": "u1", "name": "builder", "domain": domain, "password_expires_at": None},
        "project": {"id": "p1", "name": "images", "domain": domain},
        "roles": [{"id": "r1", "name": "member"}],
        "catalog": [service("identity", "keystone", "/v3"), service("compute", "nova", "/compute/v2.1"),
                    service("image", "glance", "/image"), service("network", "neutron", "/network")],
    }}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        return

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        version = {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                   "links": [{"rel": "self", "href": f"{self._base()}/v3/"}]}
        if self.path.rstrip("/") in ("", "/v3"):
            body = {"version": version} if self.path.startswith("/v3") else {"versions": {"values": [version]}}
            self._send(200 if self.path.startswith("/v3") else 300, body)
        elif self.path.startswith("/v3/auth/tokens"):
            self._send(200, _token_body(self._base()), {"X-Subject-Token": "stand-in-token"})
        else:
            self._send(404, {"error": {"code": 404, "message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path.rstrip("/") == "/v3/auth/tokens" and "auth" in request:
            self.server.token_requests += 1  # type: ignore[attr-defined]
            self._send(201, _token_body(self._base()), {"X-Subject-Token": "stand-in-token"})
        else:
            self._send(404, {"error": {"code": 404, "message": "not found"}})


@contextmanager
def keystone() -> Iterator[ThreadingHTTPServer]:
    """A running stand-in on 127.0.0.1; `server.token_requests` counts authentications."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.token_requests = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def openstack_env(server: ThreadingHTTPServer) -> dict[str, str]:
    host, port = server.server_address[:2]
    return {"OS_AUTH_URL": f"http://{host}:{port}/v3", "OS_USERNAME": "builder", "OS_PASSWORD": "not-a-secret",
            "OS_PROJECT_NAME": "images", "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
            "OS_REGION_NAME": "RegionOne"}
