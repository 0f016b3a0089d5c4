"""Preflight for `imagebuilder build`: from the host, in seconds, before any base disk, VM or Packer.

Two kinds of checks, all at once in threads:

- every release file the selected cells download answers at its mirror URL (HEAD, or a
  one-byte ranged GET where a server refuses HEAD), each URL checked once however many
  cells share it;
- every selected cloud's credentials work (``ImageStore.check_access``).

Each problem is one line naming the cell (or cloud), the file, the URL and the fix.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from imagebuilder import __version__
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell
from imagebuilder.textline import one_line
from imagebuilder.versions import UPSTREAM_FILES, UPSTREAM_MIRRORS, Download

TIMEOUT_SECONDS = 5.0  # per socket operation (connect, each read) of one check
PARALLEL = 16  # checks in flight at once
CELLS_NAMED = 3  # cells named on one line before "and N more"
# HEAD answers after which the same URL is tried again with a ranged GET: servers (and
# URLs signed for GET only) that refuse HEAD.
HEAD_REFUSED = frozenset({400, 403, 405, 501})
MISSING = frozenset({404, 410})
UNREACHABLE = "unreachable"
# The role default install methods fetch every file (ansible/roles/imagebuilder/tasks/fetch.yml);
# a cell that installs these from distribution packages instead needs none of their files.
PACKAGE_INSTALLED: dict[str, tuple[str, ...]] = {
    "containerd_install_method": ("containerd", "runc", "cni_plugins"),
    "kubernetes_install_method": ("kubeadm", "kubelet", "kubectl"),
}
# Download name -> the `mirrors:` key that serves it.
MIRROR_KEY: dict[str, str] = {name: component for component, files in UPSTREAM_FILES.items() for name in files}


@dataclass(frozen=True)
class Problem:
    subject: str  # the cells (or the cloud) it stops
    message: str

    def line(self) -> str:
        if self.message.startswith(self.subject + " ") or self.message.startswith(self.subject + ":"):
            return self.message  # the store's own line already names its cloud
        return f"{self.subject}: {self.message}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    urls: int = 0
    clouds: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        return [problem.line() for problem in self.problems]

    def summary(self) -> str:
        state = "ok" if self.ok else f"{problems(len(self.problems))}, a build would stop here"
        return (f"preflight: {state} ({self.urls} download URLs, "
                f"clouds: {', '.join(self.clouds) or 'none'})")


def problems(count: int) -> str:
    return f"{count} problem" + ("" if count == 1 else "s")


@dataclass(frozen=True)
class UrlCheck:
    url: str
    name: str  # the download name: kubeadm, containerd, ...
    cells: tuple[str, ...]


def url_checks(cells: Iterable[Cell]) -> list[UrlCheck]:
    """One check per distinct URL of the files the cells fetch, with the cells that need it."""
    users: dict[tuple[str, str], list[str]] = {}
    for cell in cells:
        for name, download in needed_downloads(cell).items():
            users.setdefault((download.url, name), []).append(cell.id)
    return [UrlCheck(url=url, name=name, cells=tuple(ids)) for (url, name), ids in users.items()]


def needed_downloads(cell: Cell) -> dict[str, Download]:
    skipped = {name for variable, names in PACKAGE_INSTALLED.items()
               if cell.ansible_vars.get(variable) == "package" for name in names}
    return {name: download for name, download in cell.downloads.items() if name not in skipped}


# -- one URL -------------------------------------------------------------------------------

class _KeepMethod(urllib.request.HTTPRedirectHandler):
    """Follow redirects with the same method (urllib turns a redirected HEAD into a full GET)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()
        return new


_OPENER = urllib.request.build_opener(_KeepMethod())


def probe(url: str, timeout: float = TIMEOUT_SECONDS) -> str | None:
    """None when the URL answers with the file; else what went wrong, as a few words."""
    status = _request(url, "HEAD", timeout)
    if isinstance(status, int) and status in HEAD_REFUSED:
        status = _request(url, "GET", timeout)
    if isinstance(status, str):
        return status
    if status < 400:
        return None
    if status in MISSING:
        return f"not found at the mirror (HTTP {status})"
    return f"the mirror answered HTTP {status}"


class Prober:
    """probe() for many URLs: once a host cannot be reached, its other URLs fail at once with the
    same reason, so a dead mirror costs one timeout, not one per file."""

    def __init__(self, timeout: float = TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self._unreachable: dict[str, str] = {}  # scheme://host:port -> the failure
        self._lock = threading.Lock()

    def __call__(self, url: str) -> str | None:
        parts = urlsplit(url)
        host = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            known = self._unreachable.get(host)
        if known is not None:
            return known
        failure = probe(url, self.timeout)
        if failure is not None and failure.startswith(UNREACHABLE):
            with self._lock:
                self._unreachable.setdefault(host, failure)
        return failure


def _request(url: str, method: str, timeout: float) -> int | str:
    """The HTTP status of the answer, or a few words on why there was none."""
    headers = {"User-Agent": f"imagebuilder/{__version__} preflight"}
    if method == "GET":
        headers["Range"] = "bytes=0-0"
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)
    except urllib.error.URLError as error:
        return f"{UNREACHABLE} ({_reason(error.reason, timeout)})"
    except (TimeoutError, socket.timeout):
        return f"{UNREACHABLE} (no answer within {timeout:g}s)"
    except (OSError, http.client.HTTPException, ValueError) as error:
        return f"{UNREACHABLE} ({_reason(error, timeout)})"


def _reason(reason: Any, timeout: float) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "host name not resolved"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {reason.verify_message}"
    text = str(getattr(reason, "strerror", None) or reason)
    return one_line(text)[:120] or reason.__class__.__name__


def url_problem(check: UrlCheck, failure: str, matrix_name: str) -> Problem:
    key = MIRROR_KEY.get(check.name, check.name)
    upstream = UPSTREAM_MIRRORS.get(key, "")
    if upstream and check.url.startswith(upstream.rstrip("/") + "/"):
        fix = f"set mirrors.{key} in {matrix_name} for airgapped builds"
    else:
        fix = f"put the file on the mirror or fix mirrors.{key} in {matrix_name}"
    # "unreachable (connection refused)" + fix -> "unreachable (connection refused; set ...)"
    text = f"{failure[:-1]}; {fix})" if failure.endswith(")") else f"{failure} ({fix})"
    return Problem(subject=_cells_subject(check.cells), message=f"{check.name}: {check.url}: {text}")


def _cells_subject(cells: tuple[str, ...]) -> str:
    named = ", ".join(cells[:CELLS_NAMED])
    more = len(cells) - CELLS_NAMED
    return f"{named} and {more} more" if more > 0 else named


# -- clouds ----------------------------------------------------------------------------------

AccessCheck = Callable[[str, dict[str, Any]], None]


def check_cloud(cloud: str, settings: dict[str, Any]) -> None:
    """The cloud's store answers with these settings and the ambient credentials (raises UserError)."""
    from imagebuilder.clouds import store_for

    store_for(cloud, settings).check_access()


def cloud_checks(cells: Iterable[Cell]) -> list[tuple[str, dict[str, Any]]]:
    """Each selected cloud once per distinct settings (overrides may change regions or projects); not
    the clouds whose images are not managed (no store to ask: Packer's own credentials are checked
    when it runs)."""
    from imagebuilder.clouds import registry

    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in [cell for cell in cells if cell.cloud not in registry.unmanaged()]:
        seen.setdefault((cell.cloud, json.dumps(cell.settings, sort_keys=True, default=str)), cell.settings)
    return [(cloud, settings) for (cloud, _), settings in seen.items()]


def _cloud_problem(cloud: str, settings: dict[str, Any], check: AccessCheck) -> Problem | None:
    try:
        check(cloud, settings)
    except UserError as error:
        return Problem(subject=cloud, message=str(error))
    except Exception as error:  # an SDK failure nobody mapped: still one line, never a traceback
        text = one_line(error)[:300]
        return Problem(subject=cloud, message=f"credentials check failed: {error.__class__.__name__}: {text} "
                                              "| fix: check this cloud's credentials and endpoint")
    return None


# -- everything ------------------------------------------------------------------------------

def run(cells: list[Cell], matrix_name: str, *, timeout: float = TIMEOUT_SECONDS,
        access: AccessCheck = check_cloud) -> Report:
    """Every check for these cells at once; the problems in a stable order (clouds first)."""
    urls = url_checks(cells)
    clouds = cloud_checks(cells)
    with ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="preflight") as pool:
        cloud_futures = [pool.submit(_cloud_problem, cloud, settings, access) for cloud, settings in clouds]
        prober = Prober(timeout)
        url_futures = [(check, pool.submit(prober, check.url)) for check in urls]
        cloud_problems = [future.result() for future in cloud_futures]
        url_problems = [url_problem(check, failure, matrix_name)
                        for check, future in url_futures if (failure := future.result()) is not None]
    return Report(problems=[p for p in cloud_problems if p is not None] + url_problems, urls=len(urls),
                  clouds=sorted({cloud for cloud, _ in clouds}))
