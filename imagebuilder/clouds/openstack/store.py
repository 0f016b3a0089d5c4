"""OpenStack: qcow2 images in Glance, with our metadata as image properties.

`publish` takes either a qcow2 (a qemu build, or any artifact with an image file) and
uploads it, or an image the openstack builder already made in Glance and completes it.
Either way the image carries:

- our metadata (`imagebuilder-*` properties), `os_distro`, `os_version`, `os_type`,
  `architecture` and hardware hints (`hw_*`), as Nova and CAPO read them;
- the tag `imagebuilder`, by which `list_images` finds our images;
- the configured visibility, private unless the matrix says otherwise.

Re-publishing finds the image by its build key: an active one is completed, never
uploaded again; a broken leftover (an upload that died) is deleted and replaced.

Credentials and endpoints come from clouds.yaml (`clouds.openstack.cloud`) or the OS_*
variables, through openstacksdk; none pass through here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from imagebuilder.artifact import Artifact
from imagebuilder.clouds import CloudError, ImageFilter, ImageRecord, ImageStore, sort_newest_first, utcnow
from imagebuilder.clouds.local import image_file_of
from imagebuilder.clouds.openstack.settings import OpenstackSettings
from imagebuilder.metadata import ImageMetadata, tag_key
from imagebuilder.osinfo import OPERATING_SYSTEMS
from imagebuilder.textline import one_line
from imagebuilder.timeparse import EPOCH, parse_time

log = logging.getLogger(__name__)
T = TypeVar("T")

OUR_TAG = "imagebuilder"
BUILD_KEY_PROPERTY = tag_key("build_key")
DEPRECATED_PROPERTY = "imagebuilder-deprecated-at"
ARCHITECTURES = {"amd64": "x86_64", "arm64": "aarch64"}
# Hints for Nova: virtio-scsi disks (discard/TRIM), a virtio RNG, the QEMU guest agent.
HARDWARE_HINTS = {"hw_disk_bus": "scsi", "hw_scsi_model": "virtio-scsi", "hw_rng_model": "virtio",
                  "hw_qemu_guest_agent": "yes"}
# 503s and connection failures are retried by keystoneauth, waiting 0.5 s, then doubling.
STATUS_CODE_RETRIES = 5  # openstacksdk's own default for the image service
CONNECT_RETRIES = 3
PATCH_CONTENT_TYPE = "application/openstack-images-v2.1-json-patch"
# A leftover that may still be another publisher's upload in progress is only removed once
# it is this old; a 'queued' (never started) or 'killed' one goes at once.
STALE_UPLOAD = timedelta(hours=2)
# Glance image attributes that are not free-form properties.
CORE_FIELDS = frozenset({"os_distro", "os_version", "os_type", "architecture", "hw_disk_bus", "hw_scsi_model",
                         "hw_rng_model", "hw_qemu_guest_agent"})


class OpenstackImageStore(ImageStore):
    cloud = "openstack"

    def __init__(self, settings: OpenstackSettings, connection: Any = None, *, timeout: int = 3600,
                 status_code_retries: int = STATUS_CODE_RETRIES, connect_retries: int = CONNECT_RETRIES) -> None:
        self.settings = settings
        self._connection = connection
        self.timeout = timeout
        self.status_code_retries = status_code_retries
        self.connect_retries = connect_retries

    @property
    def conn(self) -> Any:
        if self._connection is None:
            import openstack

            try:
                self._connection = openstack.connect(cloud=self.settings.cloud,
                                                     image_status_code_retries=self.status_code_retries,
                                                     connect_retries=self.connect_retries)
            except Exception as exc:  # openstacksdk raises several config errors
                where = f"cloud '{self.settings.cloud}' in clouds.yaml" if self.settings.cloud else "the OS_* variables"
                raise CloudError(f"openstack: cannot configure a connection from {where}: {one_line(exc)[:300]} "
                                 "| fix: set clouds.openstack.cloud to an entry of clouds.yaml, or export OS_*"
                                 ) from None
        return self._connection

    @property
    def region(self) -> str:
        return str(self.conn.config.get_region_name("image") or "default")

    def _call(self, what: str, run: Callable[[], T]) -> T:
        """Run an SDK call; its failures as one line naming what was being done."""
        from keystoneauth1 import exceptions as keystone_exceptions
        from openstack import exceptions

        try:
            return run()
        except exceptions.ForbiddenException as exc:
            raise CloudError(f"openstack {self.region}: {what} was denied ({_status(exc)}) "
                             "| fix: check the role of the publishing user in its project") from None
        except exceptions.NotFoundException as exc:
            raise CloudError(f"openstack {self.region}: {what}: not found or vanished ({_status(exc)}) "
                             "| fix: run publish again; it finds or uploads the image anew") from None
        except (exceptions.SDKException, keystone_exceptions.ClientException) as exc:
            raise CloudError(f"openstack {self.region}: {what} failed: {one_line(exc)[:300]} "
                             "| fix: check that the image endpoint is up and reachable, then run it again") from None

    def check_access(self) -> None:
        """Authenticate and read one image: the token and the image endpoint publishing needs."""
        self._call("list images", lambda: next(iter(self.conn.image.images(limit=1)), None))

    # -- publish -----------------------------------------------------------------------------

    def publish(self, artifact: Artifact) -> dict[str, str]:
        properties = image_properties(artifact.metadata)
        existing = self._existing(artifact.build_key)
        if existing is None and artifact.cloud == "openstack" and not _has_image_file(artifact):
            existing = self._builder_image(artifact)
        if existing is None:
            existing = self._upload(artifact, properties)
        self._complete(existing, properties)
        return {self.region: existing.image_id}

    def _existing(self, build_key: str) -> ImageRecord | None:
        """The active image of this build key; broken leftovers of this build key are deleted."""
        found = self.find_by_build_key(build_key)
        active = [r for r in found if r.state == "active"]
        now = utcnow()
        for record in found:
            in_progress = record.state in ("saving", "uploading", "importing")
            if record.state in ("queued", "killed") or (in_progress and now - record.created_at > STALE_UPLOAD):
                log.info("openstack: deleting %s, a %s leftover of an earlier upload", record.image_id, record.state)
                self._call(f"delete leftover {record.image_id}", lambda r=record: self.conn.image.delete_image(
                    r.image_id, ignore_missing=True))
        return min(active, key=lambda r: (r.created_at, r.image_id)) if active else None

    def _builder_image(self, artifact: Artifact) -> ImageRecord:
        """The image Packer's openstack builder made: its id is the artifact id."""
        image_id = next(iter(artifact.ids.values()), "")
        if not image_id:
            raise CloudError(f"{artifact.cell_id}: the artifact names no Glance image and has no qcow2 "
                             "| fix: rebuild the cell")
        return self.get(image_id)

    def _upload(self, artifact: Artifact, properties: dict[str, str]) -> ImageRecord:
        path: Path = image_file_of(artifact)
        name = artifact.image_name or path.stem
        log.info("openstack: uploading %s as %s", path, name)
        image = self._call(f"upload of {path.name}", lambda: self.conn.image.create_image(
            name=name, filename=str(path), disk_format=_disk_format(path), container_format="bare",
            visibility=self.settings.visibility, tags=[OUR_TAG], allow_duplicates=True, wait=True,
            timeout=self.timeout, **properties))
        uploaded = self.get(image.id)
        if uploaded.state != "active":
            raise CloudError(f"openstack {self.region}: image {uploaded.image_id} is '{uploaded.state}' after upload "
                             "| fix: run publish again; it replaces the broken image")
        return self._settle_race(uploaded, artifact.build_key)

    def _settle_race(self, uploaded: ImageRecord, build_key: str) -> ImageRecord:
        """If a concurrent publisher uploaded the same build, keep the older image and delete ours."""
        active = [r for r in self.find_by_build_key(build_key) if r.state == "active"]
        keep = min(active, key=lambda r: (r.created_at, r.image_id), default=uploaded)
        if keep.image_id != uploaded.image_id:
            log.info("openstack: %s was uploaded concurrently; deleting the duplicate %s", keep.image_id,
                     uploaded.image_id)
            self.delete(uploaded)
        return keep

    def _complete(self, record: ImageRecord, properties: dict[str, str]) -> None:
        """Properties, tag, visibility and members as configured, changing only what differs; published last."""
        current = {**record.tags, **record.extra.get("core", {})}
        changes: dict[str, Any] = {key: value for key, value in properties.items() if current.get(key) != value}
        if changes and self.change(self.region, record.image_id, "properties " + ", ".join(sorted(changes))):
            self._update(record.image_id, changes)
        if OUR_TAG not in record.extra.get("tags", []) and self.change(self.region, record.image_id,
                                                                      f"tagged {OUR_TAG}"):
            self._call(f"tagging {record.image_id}", lambda: self.conn.image.add_tag(record.image_id, OUR_TAG))
        visibility = self.settings.visibility
        if record.extra.get("visibility") != visibility and self.change(
                self.region, record.image_id, f"visibility {visibility} (was {record.extra.get('visibility')})"):
            self._update(record.image_id, {"visibility": visibility})
        if visibility == "shared":
            self._set_members(record, self.settings.members)
        self.mark_published([record])

    def _reconcile(self, records: list[ImageRecord]) -> None:
        active = [r for r in records if r.state == "active" and r.metadata is not None]
        if not active:
            raise CloudError(f"openstack {self.region}: no active image of build {records[0].image_id} "
                             f"(state {records[0].state}) | fix: build the cell again")
        oldest = min(active, key=lambda r: (r.created_at, r.image_id))  # the one publish keeps
        assert oldest.metadata is not None
        self._complete(oldest, image_properties(oldest.metadata))

    def _set_members(self, image: ImageRecord, projects: Sequence[str]) -> None:
        """Glance members exactly these projects (a member's own accept/reject status is left to it)."""
        members = {m.member_id for m in self._call(f"members of {image.image_id}",
                                                     lambda: list(self.conn.image.members(image.image_id)))}
        for project in sorted(set(projects) - members):
            if self.change(self.region, image.image_id, f"member {project} added"):
                self._call(f"sharing {image.image_id} with {project}",
                           lambda p=project: self.conn.image.add_member(image.image_id, member_id=p))
        for project in sorted(members - set(projects)):
            if self.change(self.region, image.image_id, f"member {project} removed"):
                self._call(f"unsharing {image.image_id} from {project}",
                           lambda p=project: self.conn.image.remove_member(p, image.image_id))

    def _update(self, image_id: str, changes: dict[str, Any]) -> None:
        """One JSON patch (Glance's own format): replace what the image has, add what it lacks.

        Written out rather than left to openstacksdk's update_image, which drops the
        properties it was not given when it diffs a fetched image.
        """
        from openstack import exceptions

        def run() -> None:
            answer = self.conn.image.get(f"/images/{image_id}")
            exceptions.raise_from_response(answer)
            current = answer.json()
            patch = [{"op": "replace" if key in current else "add", "path": "/" + _pointer(key), "value": value}
                     for key, value in changes.items()]
            answer = self.conn.image.patch(f"/images/{image_id}", json=patch,
                                           headers={"Content-Type": PATCH_CONTENT_TYPE})
            exceptions.raise_from_response(answer)

        self._call(f"update of {image_id}", run)

    # -- the interface -------------------------------------------------------------------------

    def get(self, image_id: str) -> ImageRecord:
        image = self._call(f"get image {image_id}", lambda: self.conn.image.get_image(image_id))
        return self._record(image)

    def list_images(self, filters: ImageFilter | None = None) -> list[ImageRecord]:
        filters = filters or ImageFilter()
        if filters.region is not None and filters.region != self.region:
            return []
        query: dict[str, Any] = {"visibility": "all"}  # community images are left out otherwise
        if not filters.include_foreign:
            query["tag"] = OUR_TAG
        images = self._call("image listing", lambda: [
            *self.conn.image.images(**query), *self.conn.image.images(is_hidden=True, **query)])
        unique = {image.id: image for image in images}
        records = (self._record(image) for image in unique.values())
        return sort_newest_first([r for r in records if filters.matches(r)])

    def tag(self, image: ImageRecord, tags: dict[str, str]) -> None:
        self._update(image.image_id, {str(k): str(v) for k, v in tags.items()})

    def copy_to_regions(self, image: ImageRecord, regions: Sequence[str]) -> dict[str, str]:
        others = [region for region in regions if region != image.region]
        if others:
            raise CloudError(f"openstack: copying {image.image_id} to {', '.join(others)} is not supported "
                             "| fix: publish the artifact once per region (one clouds.yaml entry each)")
        return {image.region: image.image_id} if regions else {}

    def share(self, image: ImageRecord, principals: Sequence[str] = (), public: bool = False) -> None:
        """Public, or shared with exactly these projects (as Glance members), or private."""
        visibility = "public" if public else "shared" if principals else "private"
        if image.extra.get("visibility") != visibility and self.change(self.region, image.image_id,
                                                                      f"visibility {visibility}"):
            self._update(image.image_id, {"visibility": visibility})
        if not public:
            self._set_members(image, principals)

    def deprecate(self, image: ImageRecord, when: datetime, end_of_life: datetime | None = None) -> None:
        """Record the time; once it has come, hide the image (os_hidden) from default listings."""
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        changes: dict[str, Any] = {DEPRECATED_PROPERTY: when.isoformat()}
        if when <= utcnow():
            changes["os_hidden"] = True
        self._update(image.image_id, changes)

    def delete(self, image: ImageRecord) -> list[str]:
        if image.extra.get("protected"):
            raise CloudError(f"openstack {image.region}: image {image.image_id} is protected "
                             "| fix: unset 'protected' on it first if it really should go")
        self._call(f"deleting {image.image_id}", lambda: self.conn.image.delete_image(image.image_id,
                                                                                       ignore_missing=False))
        return [image.image_id]

    def in_use(self, image: ImageRecord) -> list[str] | None:
        """What uses the image (images_in_use); None when Nova or Cinder cannot be asked."""
        try:
            return self.images_in_use([image])[image.image_id]
        except CloudError as exc:
            log.warning("openstack: cannot tell whether %s is in use: %s", image.image_id, exc)
            return None

    def images_in_use(self, records: Sequence[ImageRecord]) -> dict[str, list[str] | None]:
        """Servers booted from each image, and volumes made from it (a server booted from volume
        names no image; its volume's ``volume_image_metadata`` does), in every project the
        credentials may see. One volume listing for all images, one server query per image.
        Raises CloudError when either service cannot be asked: then nothing can be called unused."""
        wanted = {record.image_id for record in records}
        users: dict[str, list[str]] = {image_id: [] for image_id in wanted}
        for image_id in sorted(wanted):
            try:
                servers = list(self.conn.compute.servers(details=False, all_projects=True, image=image_id))
            except Exception as exc:  # no compute endpoint, or not allowed: cannot tell
                raise CloudError(f"openstack {self.region}: cannot list the servers (Nova): {one_line(exc)[:300]} "
                                 "| fix: give the credentials a compute endpoint and the right to list servers"
                                 ) from None
            users[image_id] += [f"server {server.id}" for server in servers]
        for image_id, user in self._volume_users(wanted):
            users[image_id].append(user)
        return dict(users)

    def _volume_users(self, image_ids: set[str]) -> list[tuple[str, str]]:
        """(image id, 'server S (boot volume V)' or 'volume V') for volumes made from these images.

        A volume of the image that no server has attached is counted too: it can boot one, and on
        copy-on-write backends (Ceph) it is a clone of the image."""
        try:
            volumes = list(self.conn.block_storage.volumes(details=True, all_projects=True))
        except Exception as exc:  # no block-storage endpoint, or not allowed: cannot tell
            raise CloudError(f"openstack {self.region}: cannot list the volumes (Cinder), which servers booted from "
                             f"volume are found by: {one_line(exc)[:300]} | fix: give the credentials a block-storage "
                             "endpoint and the right to list volumes") from None
        found: list[tuple[str, str]] = []
        for volume in volumes:
            image_id = str((volume.volume_image_metadata or {}).get("image_id") or "")
            if image_id not in image_ids:
                continue
            servers = [a.get("server_id") for a in volume.attachments or [] if a.get("server_id")]
            found += [(image_id, f"server {server} (boot volume {volume.id})") for server in servers] or [
                (image_id, f"volume {volume.id}")]
        return found

    # -- records -----------------------------------------------------------------------------

    def _record(self, image: Any) -> ImageRecord:
        properties = {str(k): str(v) for k, v in (image.properties or {}).items()}
        core = {key: str(getattr(image, key)) for key in CORE_FIELDS
                if hasattr(image, key) and getattr(image, key) not in (None, "")}
        deprecated = properties.get(DEPRECATED_PROPERTY)
        return ImageRecord(
            cloud=self.cloud,
            region=self.region,
            image_id=image.id,
            name=image.name or "",
            created_at=parse_time(image.created_at) or EPOCH,
            metadata=ImageMetadata.from_tags(properties),
            state=str(image.status or "").lower(),
            deprecated_at=parse_time(deprecated),
            public=image.visibility == "public",
            tags=properties,
            extra={"visibility": image.visibility, "owner": image.owner, "size": image.size,
                   "disk_format": image.disk_format, "protected": bool(image.is_protected),
                   "tags": list(image.tags or []), "core": core},
            plain_tags=tuple(str(tag) for tag in image.tags or []),
        )


def image_properties(metadata: ImageMetadata) -> dict[str, str]:
    """Our metadata plus what Nova and CAPO read: os_distro, os_version, architecture, hw_* hints."""
    info = OPERATING_SYSTEMS.get(metadata.os)
    return {
        **metadata.to_tags(),
        "os_distro": info.distro if info else metadata.os.split("-")[0],
        "os_version": metadata.os_version,
        "os_type": "linux",
        "architecture": ARCHITECTURES.get(metadata.arch, metadata.arch),
        **HARDWARE_HINTS,
    }


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _has_image_file(artifact: Artifact) -> bool:
    try:
        image_file_of(artifact)
    except CloudError:
        return False
    return True


def _disk_format(path: Path) -> str:
    return "raw" if path.suffix in (".raw", ".img") and not _is_qcow2(path) else "qcow2"


def _is_qcow2(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"QFI\xfb"


def _status(exc: Any) -> str:
    code = getattr(exc, "status_code", None)
    return f"HTTP {code}" if code else type(exc).__name__
