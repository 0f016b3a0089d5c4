"""Stand-in HTTP servers for cloud APIs that have no emulator (GCE images, Azure galleries).

Each speaks the real REST paths and JSON payloads that the official SDKs send, records every
request (method, path, query, JSON body) so tests can assert what the SDK really sent, and
lets a test inject faults (an HTTP status for the next N matching requests).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    body: dict[str, Any]
    times: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[["Request", "re.Match[str]"], Response]


class StandinServer:
    """A threaded HTTP server on 127.0.0.1 with routes, a request log and injected faults."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self._routes: list[tuple[str, re.Pattern[str], Route]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up -------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Route) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    def fail(self, method: str, path_pattern: str, status: int, body: dict[str, Any], times: int = 1,
             headers: dict[str, str] | None = None) -> None:
        """Answer the next `times` requests matching method and path (a regex search) with this error."""
        with self.lock:
            self.faults.append(Fault(method, re.compile(path_pattern), status, body, times, headers or {}))

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stalls

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                server._dispatch(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- queries for tests --------------------------------------------------------------

    def calls(self, method: str | None = None, path_pattern: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if (method is None or r.method == method)
                    and re.search(path_pattern, r.path)]

    # -- dispatch -----------------------------------------------------------------------

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        request = Request(handler.command, parts.path, query, body, {k.lower(): v for k, v in handler.headers.items()})
        with self.lock:
            self.requests.append(request)
            response = self._fault_for(request) or self._answer(request)
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        handler.send_response(response.status)
        for key, value in response.headers.items():
            handler.send_header(key, value)
        if payload:
            handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _fault_for(self, request: Request) -> Response | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and fault.path.search(request.path):
                fault.times -= 1
                return Response(fault.status, fault.body, fault.headers)
        return None

    def _answer(self, request: Request) -> Response:
        for method, pattern, route in self._routes:
            match = pattern.match(request.path)
            if match and method == request.method:
                return route(request, match)
        return self.not_found(request)

    def not_found(self, request: Request) -> Response:
        return Response(404, {"error": {"code": 404, "message": f"no route for {request.method} {request.path}"}})
