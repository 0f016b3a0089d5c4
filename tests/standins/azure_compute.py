"""A stand-in for Azure Resource Manager's Compute Gallery API (Microsoft.Compute/galleries).

No emulator of ARM exists. This serves the paths and payloads azure-mgmt-compute sends:

    PUT/GET/DELETE   .../resourceGroups/{rg}/providers/Microsoft.Compute/galleries/{g}
    PUT/GET          .../galleries/{g}/images/{definition}          GET .../galleries/{g}/images (list)
    PUT/GET/PATCH/DELETE .../images/{definition}/versions/{version} GET .../versions (list, nextLink pages)
    POST             .../galleries/{g}/share                        (sharing profile update)
    GET              /subscriptions/{s}/providers/Microsoft.Compute/locations/{l}/operations/{id}
    GET              /subscriptions/{s}/providers/Microsoft.Compute/virtualMachines, .../virtualMachineScaleSets
    GET              /subscriptions/{s}/providers/Microsoft.Compute/locations/{l}/publishers/{p}/artifacttypes/
                     vmimage/offers/{o}/skus/{sku}/versions          (marketplace image versions)

Every write is a long-running operation as on Azure: 201/200 (202 for DELETE) with an
``Azure-AsyncOperation`` header; the operation reports ``InProgress`` until it has been polled
``op_polls`` times, then ``Succeeded`` (or ``Failed`` with an ARM error, when a test asked for
it or the VHD source is not one Azure would take). Resources carry ``provisioningState``.
``api-version`` and a bearer token are required, as ARM requires them.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from standins import Request, Response, StandinServer

RG = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute"
GALLERY = RG + r"/galleries/(?P<gallery>[^/]+)"
DEFINITION = GALLERY + r"/images/(?P<definition>[^/]+)"
VERSION = DEFINITION + r"/versions/(?P<version>[^/]+)"
VERSION_NAME = re.compile(r"^\d{1,10}\.\d{1,10}\.\d{1,10}$")
INT32_MAX = 2147483647  # ARM reads each part of a gallery image version as a 32-bit signed integer


def arm_error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message}})


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def end_of_life_problem(profile: dict[str, Any]) -> Response | None:
    """ARM refuses a version whose endOfLifeDate is not in the future: "EndOfLifeDate must be set to a
    future date." (the error Azure returns, as reported against Microsoft's own tutorial:
    https://github.com/MicrosoftDocs/azure-docs/issues/86025)."""
    value = profile.get("endOfLifeDate")
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return arm_error(400, "InvalidParameter", f"The value '{value}' of endOfLifeDate is not a date-time.")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment <= datetime.now(timezone.utc):
        return arm_error(400, "InvalidParameter", "EndOfLifeDate must be set to a future date.")
    return None


@dataclass
class AsyncOperation:
    id: str
    polls_left: int
    finish: Callable[[], dict[str, Any] | None]  # returns an ARM error to fail it
    resource: dict[str, Any] | None = None
    status: str = "InProgress"
    error: dict[str, Any] | None = None
    forced: dict[str, Any] | None = None


@dataclass
class AzureComputeStandin(StandinServer):
    op_polls: int = 2
    page_size: int = 100
    validate_vhd: Callable[[str], str | None] | None = None  # uri -> error message, None when acceptable
    managed_images: set[str] = field(default_factory=set)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower-case id -> resource
    operations: dict[str, AsyncOperation] = field(default_factory=dict)
    sharing: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fail_next_operation: list[dict[str, Any]] = field(default_factory=list)  # {"code", "message"}
    machines: list[dict[str, Any]] = field(default_factory=list)  # VirtualMachine JSON
    scale_sets: list[dict[str, Any]] = field(default_factory=list)  # VirtualMachineScaleSet JSON
    # The marketplace: (location, publisher, offer, sku) -> its image versions ("2024.1.15", ...).
    marketplace: dict[tuple[str, str, str, str], list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        StandinServer.__init__(self)
        self._counter = itertools.count(1)
        self.route("PUT", GALLERY, self.put_gallery)
        self.route("GET", GALLERY, self.get)
        self.route("DELETE", GALLERY, self.delete)
        self.route("POST", GALLERY + "/share", self.share)
        self.route("PUT", DEFINITION, self.put_definition)
        self.route("GET", DEFINITION, self.get)
        self.route("GET", GALLERY + "/images", self.list_children)
        self.route("PUT", VERSION, self.put_version)
        self.route("GET", VERSION, self.get)
        self.route("PATCH", VERSION, self.patch_version)
        self.route("DELETE", VERSION, self.delete)
        self.route("GET", DEFINITION + "/versions", self.list_children)
        self.route("GET", r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)"
                          r"/operations/(?P<op>[^/]+)", self.get_operation)
        subscription = r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.Compute/"
        self.route("GET", subscription + "virtualMachines", lambda r, m: Response(200, {"value": self.machines}))
        self.route("GET", subscription + "virtualMachineScaleSets",
                   lambda r, m: Response(200, {"value": self.scale_sets}))
        self.route("GET", subscription + r"locations/(?P<loc>[^/]+)/publishers/(?P<pub>[^/]+)/artifacttypes/vmimage"
                          r"/offers/(?P<offer>[^/]+)/skus/(?P<sku>[^/]+)/versions", self.marketplace_versions)

    def marketplace_versions(self, request: Request, match: re.Match[str]) -> Response:
        key = (match["loc"].lower(), match["pub"], match["offer"], match["sku"])
        if key not in self.marketplace:
            return arm_error(404, "PlatformImageNotFound", f"Artifact: VMImage was not found ({'/'.join(key)})")
        return Response(200, [{"name": version, "location": key[0], "id": f"{request.path}/{version}"}
                              for version in self.marketplace[key]])

    # -- plumbing -------------------------------------------------------------------------

    def _answer(self, request: Request) -> Response:
        if not request.query.get("api-version"):
            return arm_error(400, "MissingApiVersionParameter", "The api-version query parameter is required")
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return arm_error(401, "AuthenticationFailed", "Authentication failed: no bearer token")
        return super()._answer(request)

    def resource(self, resource_id: str) -> dict[str, Any] | None:
        return self.resources.get(resource_id.lower())

    def versions(self) -> list[dict[str, Any]]:
        return [r for r in self.resources.values() if r["type"] == "Microsoft.Compute/galleries/images/versions"]

    def _lro(self, request: Request, resource: dict[str, Any] | None, status: int,
             finish: Callable[[], dict[str, Any] | None]) -> Response:
        op_id = str(uuid.UUID(int=next(self._counter)))
        forced = self.fail_next_operation.pop(0) if self.fail_next_operation else None
        self.operations[op_id] = AsyncOperation(op_id, self.op_polls, finish, resource=resource, forced=forced)
        location = (resource or {}).get("location", "westeurope")
        base = f"{self.base_url}/subscriptions/{request.path.split('/')[2]}/providers/Microsoft.Compute/locations/"
        url = f"{base}{location}/operations/{op_id}?api-version={request.query['api-version']}"
        headers = {"Azure-AsyncOperation": url, "Retry-After": "0"}
        if request.method == "DELETE":
            headers["Location"] = url + "&monitor=true"
        return Response(status, resource, headers)

    def get_operation(self, request: Request, match: re.Match[str]) -> Response:
        operation = self.operations.get(match["op"])
        if operation is None:
            return arm_error(404, "NotFound", f"operation {match['op']} not found")
        if operation.status == "InProgress":
            operation.polls_left -= 1
            if operation.polls_left <= 0:
                error = operation.forced or operation.finish()
                if operation.forced and operation.resource is not None:
                    operation.resource["properties"]["provisioningState"] = "Failed"
                operation.status = "Failed" if error else "Succeeded"
                operation.error = error
        if request.query.get("monitor") and operation.status != "InProgress":
            return Response(204)
        body: dict[str, Any] = {"name": operation.id, "status": operation.status, "startTime": now_iso()}
        if operation.status != "InProgress":
            body["endTime"] = now_iso()
        if operation.error:
            body["error"] = {"code": operation.error["code"], "message": operation.error["message"]}
        return Response(200, body, {"Retry-After": "0"})

    def _new(self, request: Request, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": request.path, "name": name, "type": kind, "location": body.get("location", ""),
            "tags": dict(body.get("tags") or {}), "properties": dict(body.get("properties") or {}),
        }

    def _parent(self, request: Request, levels: int) -> dict[str, Any] | None:
        return self.resource("/".join(request.path.split("/")[:-levels]))

    # -- handlers ---------------------------------------------------------------------------

    def get(self, request: Request, match: re.Match[str]) -> Response:
        found = self.resource(request.path)
        if found is None:
            return arm_error(404, "ResourceNotFound", f"The Resource '{request.path}' was not found.")
        return Response(200, found)

    def list_children(self, request: Request, match: re.Match[str]) -> Response:
        if self.resource(request.path.rsplit("/", 1)[0]) is None:
            return arm_error(404, "ParentResourceNotFound", f"parent of {request.path} not found")
        prefix = request.path.lower() + "/"
        children = sorted((r for key, r in self.resources.items() if key.startswith(prefix)
                           and "/" not in key[len(prefix):]), key=lambda r: r["name"])
        start = int(request.query.get("$skiptoken") or 0)
        body: dict[str, Any] = {"value": children[start:start + self.page_size]}
        if start + self.page_size < len(children):
            body["nextLink"] = (f"{self.base_url}{request.path}?api-version={request.query['api-version']}"
                                f"&$skiptoken={start + self.page_size}")
        return Response(200, body)

    def put_gallery(self, request: Request, match: re.Match[str]) -> Response:
        body = request.body or {}
        if not body.get("location"):
            return arm_error(400, "LocationRequired", "The location property is required for this definition.")
        existing = self.resource(request.path)
        resource = existing or self._new(request, "Microsoft.Compute/galleries", match["gallery"], body)
        resource["properties"].update(body.get("properties") or {})
        resource["properties"]["provisioningState"] = "Updating" if existing else "Creating"
        resource["properties"]["identifier"] = {"uniqueName": f"{match['sub'][:8]}-{match['gallery'].upper()}"}
        self.resources[request.path.lower()] = resource
        return self._lro(request, resource, 200 if existing else 201, lambda: self._succeed(resource))

    def put_definition(self, request: Request, match: re.Match[str]) -> Response:
        gallery = self._parent(request, 2)
        if gallery is None:
            return arm_error(404, "ParentResourceNotFound", f"Gallery {match['gallery']} not found")
        body = request.body or {}
        props = body.get("properties") or {}
        missing = [k for k in ("osType", "osState", "identifier") if not props.get(k)]
        if missing:
            return arm_error(400, "InvalidParameter", f"Required parameter 'properties.{missing[0]}' is missing")
        for other in self.resources.values():
            if other["type"] == "Microsoft.Compute/galleries/images" and other["id"].lower() != request.path.lower() \
                    and other["id"].lower().startswith(gallery["id"].lower() + "/") \
                    and other["properties"].get("identifier") == props["identifier"]:
                return arm_error(409, "GalleryImageIdentifierInUse", "The identifier is used by " + other["name"])
        existing = self.resource(request.path)
        resource = existing or self._new(request, "Microsoft.Compute/galleries/images", match["definition"], body)
        resource["properties"].update(props)
        resource["properties"]["provisioningState"] = "Updating" if existing else "Creating"
        self.resources[request.path.lower()] = resource
        return self._lro(request, resource, 200 if existing else 201, lambda: self._succeed(resource))

    def put_version(self, request: Request, match: re.Match[str]) -> Response:
        if self._parent(request, 2) is None:
            return arm_error(404, "ParentResourceNotFound", f"Gallery image {match['definition']} not found")
        name = match["version"]
        if not VERSION_NAME.match(name) or any(int(part) > INT32_MAX for part in name.split(".")):
            return arm_error(400, "InvalidParameter", f"The gallery image version name '{name}' is invalid: it "
                             "must be Major.Minor.Patch with each part a 32-bit integer (at most 2147483647)")
        body = request.body or {}
        props = body.get("properties") or {}
        storage = props.get("storageProfile") or {}
        source_id = (storage.get("source") or {}).get("id")
        disk_source = ((storage.get("osDiskImage") or {}).get("source") or {})
        if not source_id and not disk_source.get("uri"):
            return arm_error(400, "InvalidParameter", "storageProfile needs a source id or osDiskImage.source")
        if disk_source.get("uri") and not disk_source.get("storageAccountId"):
            return arm_error(400, "InvalidParameter", "osDiskImage.source.storageAccountId is required with a uri")
        if source_id and source_id.lower() not in {i.lower() for i in self.managed_images}:
            return arm_error(404, "NotFound", f"Source image {source_id} not found")
        if (problem := end_of_life_problem(props.get("publishingProfile") or {})) is not None:
            return problem
        existing = self.resource(request.path)
        resource = existing or self._new(request, "Microsoft.Compute/galleries/images/versions", match["version"],
                                         body)
        resource["tags"] = dict(body.get("tags") or {})
        resource["properties"] = dict(props)
        profile = resource["properties"].setdefault("publishingProfile", {})
        profile.setdefault("publishedDate", now_iso())
        profile.setdefault("excludeFromLatest", False)
        resource["properties"]["provisioningState"] = "Updating" if existing else "Creating"
        self.resources[request.path.lower()] = resource

        def finish() -> dict[str, Any] | None:
            if disk_source.get("uri") and self.validate_vhd:
                problem = self.validate_vhd(disk_source["uri"])
                if problem:
                    resource["properties"]["provisioningState"] = "Failed"
                    return {"code": "InvalidParameter", "message": problem}
            return self._succeed(resource)

        return self._lro(request, resource, 200 if existing else 201, finish)

    def patch_version(self, request: Request, match: re.Match[str]) -> Response:
        resource = self.resource(request.path)
        if resource is None:
            return arm_error(404, "ResourceNotFound", f"The Resource '{request.path}' was not found.")
        body = request.body or {}
        profile = (body.get("properties") or {}).get("publishingProfile") or {}
        if (problem := end_of_life_problem(profile)) is not None:
            return problem
        if "tags" in body:
            resource["tags"] = dict(body["tags"] or {})
        for key, value in (body.get("properties") or {}).items():
            if isinstance(value, dict):
                resource["properties"].setdefault(key, {}).update(value)
            else:
                resource["properties"][key] = value
        resource["properties"]["provisioningState"] = "Updating"
        return self._lro(request, resource, 200, lambda: self._succeed(resource))

    def delete(self, request: Request, match: re.Match[str]) -> Response:
        resource = self.resource(request.path)
        if resource is None:
            return Response(204)
        props = resource["properties"]
        safety = props.get("safetyProfile") or {}
        end_of_life = (props.get("publishingProfile") or {}).get("endOfLifeDate")
        if safety.get("blockDeletionBeforeEndOfLife") and (
                not end_of_life or datetime.fromisoformat(end_of_life.replace("Z", "+00:00"))
                > datetime.now(timezone.utc)):
            return arm_error(409, "OperationNotAllowed",
                             "Deletion is blocked before the end of life date (safetyProfile)")
        prefix = request.path.lower() + "/"
        if any(key.startswith(prefix) for key in self.resources):
            return arm_error(409, "CannotDeleteResource", f"{resource['name']} has nested resources")
        props["provisioningState"] = "Deleting"
        key = request.path.lower()

        def finish() -> None:
            self.resources.pop(key, None)

        return self._lro(request, None, 202, finish)

    def share(self, request: Request, match: re.Match[str]) -> Response:
        gallery = self._parent(request, 1)
        if gallery is None:
            return arm_error(404, "ResourceNotFound", "gallery not found")
        body = request.body or {}
        key = gallery["id"].lower()
        groups = self.sharing.setdefault(key, [])
        for group in body.get("groups") or []:
            current = next((g for g in groups if g["type"] == group["type"]), None)
            if current is None:
                current = {"type": group["type"], "ids": []}
                groups.append(current)
            if body.get("operationType") == "Add":
                current["ids"] = sorted(set(current["ids"]) | set(group["ids"]))
            elif body.get("operationType") == "Remove":
                current["ids"] = sorted(set(current["ids"]) - set(group["ids"]))
        if body.get("operationType") == "Reset":
            groups.clear()
        gallery["properties"]["sharingProfile"] = {"permissions": "Groups", "groups": groups}
        answer = {"operationType": body.get("operationType"), "groups": groups}
        return Response(200, answer)  # done at once: no Azure-AsyncOperation header, so the poller stops

    def _succeed(self, resource: dict[str, Any]) -> None:
        resource["properties"]["provisioningState"] = "Succeeded"
        return None
