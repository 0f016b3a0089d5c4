"""A stand-in for the Compute Engine v1 images and global operations REST API.

No emulator of Compute Engine exists. This serves the paths and JSON payloads that
google-cloud-compute's REST transport sends and reads:

    GET/POST  /compute/v1/projects/{project}/global/images             (list with filter, pages; insert)
    GET/PATCH/DELETE .../global/images/{image}
    GET       .../global/images/family/{family}                        (newest non-deprecated image)
    POST      .../global/images/{image}/setLabels                      (labelFingerprint checked: 412)
    POST      .../global/images/{image}/deprecate                      (states and RFC 3339 times checked)
    POST      /compute/v1/projects/{project}/zones/{zone}/disks         (from sourceImage; OBSOLETE refused)
    GET/POST  .../global/images/{image}/getIamPolicy, setIamPolicy
    GET       .../global/operations/{operation}, POST .../{operation}/wait
    GET       /compute/v1/projects/{project}/aggregated/disks, .../aggregated/instanceTemplates

Mutations answer with an Operation that is DONE after `op_polls` looks at it (get or wait),
and only then the image changes (READY, deleted). `requestId` makes an insert idempotent as
on GCE. An image insert from `rawDisk.source` reads the tar.gz through `read_source` (the
test points it at the GCS emulator) and fails the operation when it holds no `disk.raw`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from standins import Request, Response, StandinServer

PREFIX = r"/compute/v1/projects/(?P<project>[^/]+)/global"
NAME = r"(?P<image>[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)"
FILTER_TERM = re.compile(r'\(?\s*(?P<field>[\w.-]+)\s*(?P<op>=|!=|eq|ne)\s*(?P<value>"[^"]*"|[^\s)]+)\s*\)?')


def rfc3339(moment: datetime | None = None) -> str:
    return (moment or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="milliseconds")


def google_error(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message,
                      "errors": [{"message": message, "domain": "global", "reason": reason}]}}


@dataclass
class Operation:
    body: dict[str, Any]
    polls_left: int
    on_done: Callable[[Operation], dict[str, Any] | None]  # returns an error dict to fail the operation
    error: dict[str, Any] | None = None  # forced failure: {"code", "message", "http": int}


@dataclass
class GcpComputeStandin(StandinServer):
    op_polls: int = 2
    read_source: Callable[[str], bytes] | None = None
    images: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    policies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    operations: dict[tuple[str, str], Operation] = field(default_factory=dict)
    request_ids: dict[str, str] = field(default_factory=dict)
    fail_next_operation: list[dict[str, Any]] = field(default_factory=list)  # {"code","message","http","keep_image"}
    disks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # scope ("zones/x") -> Disk JSON
    templates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # scope ("global") -> template JSON

    def __post_init__(self) -> None:
        StandinServer.__init__(self)
        self._ids = itertools.count(4_000_000_000_000_001)
        self.route("GET", PREFIX + "/images", self.list_images)
        self.route("POST", PREFIX + "/images", self.insert)
        self.route("GET", PREFIX + "/images/family/(?P<family>[^/]+)", self.from_family)
        self.route("GET", PREFIX + f"/images/{NAME}", self.get)
        self.route("PATCH", PREFIX + f"/images/{NAME}", self.patch)
        self.route("DELETE", PREFIX + f"/images/{NAME}", self.delete)
        self.route("POST", PREFIX + f"/images/{NAME}/setLabels", self.set_labels)
        self.route("POST", PREFIX + f"/images/{NAME}/deprecate", self.deprecate)
        self.route("GET", PREFIX + f"/images/{NAME}/getIamPolicy", self.get_policy)
        self.route("POST", PREFIX + f"/images/{NAME}/setIamPolicy", self.set_policy)
        self.route("GET", PREFIX + "/operations/(?P<op>[^/]+)", self.get_operation)
        self.route("POST", PREFIX + "/operations/(?P<op>[^/]+)/wait", self.get_operation)
        self.route("POST", r"/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/disks", self.insert_disk)
        aggregated = r"/compute/v1/projects/(?P<project>[^/]+)/aggregated/"
        self.route("GET", aggregated + "disks", lambda r, m: self.aggregated(r, "disks", self.disks))
        self.route("GET", aggregated + "instanceTemplates",
                   lambda r, m: self.aggregated(r, "instanceTemplates", self.templates))

    # -- helpers ------------------------------------------------------------------------

    def link(self, project: str, kind: str, name: str) -> str:
        return f"{self.base_url}/compute/v1/projects/{project}/global/{kind}/{name}"

    def _image(self, match: re.Match[str]) -> dict[str, Any] | None:
        return self.images.get((match["project"], match["image"]))

    def _missing(self, match: re.Match[str]) -> Response:
        return Response(404, google_error(404, "notFound",
                                          f"The resource 'projects/{match['project']}/global/images/{match['image']}' "
                                          "was not found"))

    def _operation(self, project: str, kind: str, target: dict[str, Any] | None, target_link: str,
                   on_done: Callable[[Operation], dict[str, Any] | None], request: Request) -> Response:
        number = next(self._ids)
        name = f"operation-{number}"
        body = {
            "kind": "compute#operation", "id": str(number), "name": name, "operationType": kind,
            "targetLink": target_link, "targetId": (target or {}).get("id", ""), "status": "RUNNING",
            "user": "imagebuilder@example.iam.gserviceaccount.com", "progress": 0, "insertTime": rfc3339(),
            "startTime": rfc3339(), "selfLink": self.link(project, "operations", name),
        }
        forced = self.fail_next_operation.pop(0) if self.fail_next_operation else None
        operation = Operation(body, self.op_polls, on_done, forced)
        self.operations[(project, name)] = operation
        request_id = request.query.get("requestId")
        if request_id:
            self.request_ids[request_id] = name
        return Response(200, dict(body))

    def _finish(self, operation: Operation) -> None:
        error = operation.on_done(operation) or operation.error
        body = operation.body
        body.update(status="DONE", progress=100, endTime=rfc3339())
        if error:
            body["error"] = {"errors": [{"code": error["code"], "message": error["message"]}]}
            body["httpErrorStatusCode"] = error.get("http", 400)
            body["httpErrorMessage"] = error.get("http_message", "BAD REQUEST")

    # -- operations ---------------------------------------------------------------------

    def get_operation(self, request: Request, match: re.Match[str]) -> Response:
        operation = self.operations.get((match["project"], match["op"]))
        if operation is None:
            return Response(404, google_error(404, "notFound", f"operation {match['op']} not found"))
        if operation.body["status"] != "DONE":
            operation.polls_left -= 1
            if operation.polls_left <= 0:
                self._finish(operation)
        return Response(200, dict(operation.body))

    def aggregated(self, request: Request, key: str, scopes: dict[str, list[dict[str, Any]]]) -> Response:
        """An aggregated list, one scope per page (so the SDK's pager has pages to follow)."""
        names = sorted(scopes)
        start = int(request.query.get("pageToken") or 0)
        items: dict[str, Any] = {name: {key: scopes[name]} for name in names[start:start + 1]}
        items.setdefault("regions/us-east1", {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "none"}})
        body: dict[str, Any] = {"kind": f"compute#{key}AggregatedList", "items": items}
        if start + 1 < len(names):
            body["nextPageToken"] = str(start + 1)
        return Response(200, body)

    # -- images -------------------------------------------------------------------------

    def list_images(self, request: Request, match: re.Match[str]) -> Response:
        try:
            terms = parse_filter(request.query.get("filter", ""))
        except ValueError as exc:
            return Response(400, google_error(400, "invalid", f"Invalid value for field 'filter': {exc}"))
        items = [image for (project, _), image in sorted(self.images.items())
                 if project == match["project"] and all(term_matches(image, *term) for term in terms)]
        size = int(request.query.get("maxResults") or 500)
        start = int(request.query.get("pageToken") or 0)
        body: dict[str, Any] = {"kind": "compute#imageList", "id": f"projects/{match['project']}/global/images",
                                "items": items[start:start + size],
                                "selfLink": f"{self.base_url}{request.path}"}
        if start + size < len(items):
            body["nextPageToken"] = str(start + size)
        return Response(200, body)

    def get(self, request: Request, match: re.Match[str]) -> Response:
        image = self._image(match)
        return Response(200, image) if image else self._missing(match)

    def from_family(self, request: Request, match: re.Match[str]) -> Response:
        candidates = [image for (project, _), image in self.images.items()
                      if project == match["project"] and image.get("family") == match["family"]
                      and image["status"] == "READY"
                      and image.get("deprecated", {}).get("state", "ACTIVE") == "ACTIVE"]
        if not candidates:
            return Response(404, google_error(404, "notFound", f"The resource 'projects/{match['project']}/global/"
                                                               f"images/family/{match['family']}' was not found"))
        return Response(200, max(candidates, key=lambda i: (i["creationTimestamp"], int(i["id"]))))

    def insert(self, request: Request, match: re.Match[str]) -> Response:
        project = match["project"]
        request_id = request.query.get("requestId")
        if request_id and request_id in self.request_ids:
            return Response(200, dict(self.operations[(project, self.request_ids[request_id])].body))
        body = request.body or {}
        name = body.get("name", "")
        if not re.fullmatch(NAME, name):
            return Response(400, google_error(400, "invalid", f"Invalid value for field 'resource.name': '{name}'"))
        if (project, name) in self.images:
            return Response(409, google_error(409, "alreadyExists",
                                              f"The resource 'projects/{project}/global/images/{name}' already exists"))
        refused = invalid_labels(body.get("labels") or {}, "resource.labels")
        if refused is not None:
            return refused
        number = next(self._ids)
        image = {
            **body,
            "kind": "compute#image", "id": str(number), "name": name, "creationTimestamp": rfc3339(),
            "status": "PENDING", "selfLink": self.link(project, "images", name),
            "labels": dict(body.get("labels") or {}), "labelFingerprint": fingerprint(body.get("labels") or {}),
            "sourceType": body.get("sourceType", "RAW"),
        }
        self.images[(project, name)] = image

        def done(operation: Operation) -> dict[str, Any] | None:
            error = operation.error or self._check_source(image)
            if error:
                if error.get("keep_image"):
                    image["status"] = "FAILED"
                else:
                    self.images.pop((project, name), None)
                return error
            image["status"] = "READY"
            return None

        return self._operation(project, "insert", image, image["selfLink"], done, request)

    def _check_source(self, image: dict[str, Any]) -> dict[str, Any] | None:
        source = (image.get("rawDisk") or {}).get("source")
        if not source:
            return None
        try:
            assert self.read_source is not None, "no read_source configured"
            data = self.read_source(source)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                member = archive.getmember("disk.raw")
        except (KeyError, tarfile.TarError, OSError, AssertionError) as exc:
            return {"code": "INVALID_IMAGE_FILE", "http": 400,
                    "message": f"The image file {source} is not a tar.gz holding disk.raw: {exc}"}
        if member.size % (1 << 30):
            return {"code": "INVALID_IMAGE_FILE", "http": 400,
                    "message": f"disk.raw is {member.size} bytes, not a multiple of 1 GB"}
        image["archiveSizeBytes"] = str(len(data))
        image["diskSizeGb"] = str(member.size >> 30)
        return None

    def patch(self, request: Request, match: re.Match[str]) -> Response:
        image = self._image(match)
        if image is None:
            return self._missing(match)
        changes = {k: v for k, v in (request.body or {}).items() if k in ("family", "description")}
        return self._operation(match["project"], "patch", image, image["selfLink"],
                               lambda _op: image.update(changes), request)

    def delete(self, request: Request, match: re.Match[str]) -> Response:
        image = self._image(match)
        if image is None:
            return self._missing(match)
        image["status"] = "DELETING"
        key = (match["project"], match["image"])
        return self._operation(match["project"], "delete", image, image["selfLink"],
                               lambda _op: self.images.pop(key, None) and None, request)

    def set_labels(self, request: Request, match: re.Match[str]) -> Response:
        image = self._image(match)
        if image is None:
            return self._missing(match)
        body = request.body or {}
        if body.get("labelFingerprint") != image["labelFingerprint"]:
            return Response(412, google_error(412, "conditionNotMet",
                                              "Labels fingerprint either invalid or resource labels have changed"))
        labels = dict(body.get("labels") or {})
        refused = invalid_labels(labels, "labels")
        if refused is not None:
            return refused

        def done(_op: Operation) -> None:
            image["labels"] = labels
            image["labelFingerprint"] = fingerprint(labels)

        return self._operation(match["project"], "setLabels", image, image["selfLink"], done, request)

    def deprecate(self, request: Request, match: re.Match[str]) -> Response:
        """DeprecationStatus as GCE documents it: state one of ACTIVE, DEPRECATED, OBSOLETE, DELETED;
        `deprecated`, `obsolete` and `deleted` RFC 3339 timestamps, informational only (GCE changes
        no state by itself when they come); ACTIVE clears them all. Reference:
        https://cloud.google.com/compute/docs/reference/rest/v1/images/deprecate and
        https://cloud.google.com/sdk/gcloud/reference/compute/images/deprecate (--state, --obsolete-in)."""
        image = self._image(match)
        if image is None:
            return self._missing(match)
        status = dict(request.body or {})
        if status.get("state") not in DEPRECATION_STATES:
            return Response(400, google_error(400, "invalid",
                                              f"Invalid value for field 'state': {status.get('state')}"))
        for key in ("deprecated", "obsolete", "deleted"):
            if key in status and not valid_rfc3339(status[key]):
                return Response(400, google_error(400, "invalid", f"Invalid value for field "
                                                                  f"'deprecationStatusResource.{key}': '{status[key]}'"))

        def done(_op: Operation) -> None:
            if status["state"] == "ACTIVE":
                image.pop("deprecated", None)
            else:
                image["deprecated"] = status

        return self._operation(match["project"], "deprecate", image, image["selfLink"], done, request)

    def insert_disk(self, request: Request, match: re.Match[str]) -> Response:
        """A disk from `sourceImage`: "Operations which use OBSOLETE or DELETED resources will be rejected
        and result in an error"; a DEPRECATED one is used, with a warning (DeprecationStatus.State:
        https://cloud.google.com/compute/docs/reference/rest/v1/DeprecationStatus)."""
        body = request.body or {}
        found = re.search(r"projects/(?P<project>[^/]+)/global/images/(?P<image>[^/]+)$", body.get("sourceImage", ""))
        image = self.images.get((found["project"], found["image"])) if found else None
        if image is None:
            return Response(404, google_error(404, "notFound", f"The resource '{body.get('sourceImage')}' was not found"))
        state = image.get("deprecated", {}).get("state", "ACTIVE")
        if state in ("OBSOLETE", "DELETED"):
            return Response(400, google_error(400, "invalid", f"The resource '{image['selfLink']}' is {state.lower()}"
                                                              " and cannot be used"))
        project, zone = match["project"], match["zone"]
        disk = {"kind": "compute#disk", "id": str(next(self._ids)), "name": body.get("name", ""),
                "sourceImage": image["selfLink"],
                "selfLink": f"{self.base_url}/compute/v1/projects/{project}/zones/{zone}/disks/{body.get('name')}"}
        response = self._operation(project, "insert", disk, disk["selfLink"],
                                   lambda _op: self.disks.setdefault(f"zones/{zone}", []).append(disk), request)
        if state == "DEPRECATED":
            self.operations[(project, response.body["name"])].body["warnings"] = [{
                "code": "DEPRECATED_RESOURCE_USED",
                "message": f"The resource '{image['selfLink']}' is deprecated. A suggested replacement is "
                           f"'{image['deprecated'].get('replacement', '')}'."}]
        return response

    def get_policy(self, request: Request, match: re.Match[str]) -> Response:
        if self._image(match) is None:
            return self._missing(match)
        return Response(200, self.policies.get((match["project"], match["image"]), {"version": 1, "etag": "ACAB"}))

    def set_policy(self, request: Request, match: re.Match[str]) -> Response:
        if self._image(match) is None:
            return self._missing(match)
        policy = dict((request.body or {}).get("policy") or {})
        current = self.policies.get((match["project"], match["image"]), {"etag": "ACAB"})
        if policy.get("etag") and policy["etag"] != current["etag"]:
            return Response(412, google_error(412, "conditionNotMet", "etag mismatch"))
        policy["etag"] = hashlib.sha1(repr(sorted(policy.items())).encode()).hexdigest()[:12]
        policy.setdefault("version", 1)
        self.policies[(match["project"], match["image"])] = policy
        return Response(200, policy)


DEPRECATION_STATES = ("ACTIVE", "DEPRECATED", "OBSOLETE", "DELETED")


def valid_rfc3339(value: Any) -> bool:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def invalid_labels(labels: dict[str, str], field: str) -> Response | None:
    """GCE's label rules (keys [a-z][a-z0-9_-], values [a-z0-9_-], both at most 63 characters): a 400, or None."""
    for key, value in labels.items():
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
            return Response(400, google_error(400, "invalid", f"Invalid value for field '{field}': '{key}={value}'"))
    return None


def fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]


def parse_filter(text: str) -> list[tuple[str, str, str]]:
    """'(labels.a = "x") AND (family = "y")' -> [(field, op, value)]; GCE's simple comparison syntax."""
    text = text.strip()
    if not text:
        return []
    terms = []
    rest = text
    while rest:
        found = FILTER_TERM.match(rest)
        if not found:
            raise ValueError(f"cannot parse {rest!r}")
        value = found["value"].strip('"')
        terms.append((found["field"], "=" if found["op"] in ("=", "eq") else "!=", value))
        rest = rest[found.end():].strip()
        if rest.upper().startswith("AND "):
            rest = rest[4:].strip()
    return terms


def term_matches(image: dict[str, Any], field_name: str, op: str, value: str) -> bool:
    current: Any = image
    for part in field_name.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    have = "" if current is None else str(current)
    return (have == value) == (op == "=")
