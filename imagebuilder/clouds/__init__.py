"""One small interface for every place images live: AWS, OpenStack, GCP, Azure, the local catalogue.

An ``ImageStore`` publishes an artifact (the record a build produced) and manages what is
already published: list with metadata, find by build key, tag, copy, share, deprecate,
delete. Each cloud implements it in its own module; ``store_for`` picks one. Retention
builds on ``list_images`` (metadata and creation time), ``in_use`` and ``delete``.

Errors a user can act on (a missing region, a denied permission, an image that vanished)
are ``CloudError``: a ``UserError`` with one line naming the image, the call and the fix.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from imagebuilder.errors import UserError
from imagebuilder.clouds import registry
from imagebuilder.metadata import PUBLISHED_TAG, PUBLISHED_VALUE, ImageMetadata, is_published
from imagebuilder.provenance import PROVENANCE_SUFFIX
from imagebuilder.sbom import SBOM_SUFFIX

if TYPE_CHECKING:
    from imagebuilder.artifact import Artifact


# The documents a build writes beside its image (attest.py): kind -> the suffix after the image's name.
ATTESTATION_FILES = {"sbom": SBOM_SUFFIX, "provenance": PROVENANCE_SUFFIX}


class CloudError(UserError):
    """A cloud call failed in a way the user can act on; one line, never a traceback."""


@dataclass(frozen=True)
class ImageRecord:
    """One image in one region, as every store reports it."""

    cloud: str  # "aws", "openstack", "local", ...
    region: str  # AWS region, OpenStack region name (or "default"), "local"
    image_id: str
    name: str
    created_at: datetime  # timezone-aware, UTC
    metadata: ImageMetadata | None  # None: not an imagebuilder image
    state: str = "available"  # the cloud's own word, lower case ("available", "active", "pending", ...)
    deprecated_at: datetime | None = None  # deprecated from then on (GCP/AWS semantics)
    obsoleted_at: datetime | None = None  # new uses refused from then on (GCE's OBSOLETE)
    public: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # every tag/property, ours included
    extra: dict[str, Any] = field(default_factory=dict)  # cloud-specific: snapshots, file path, owner...
    plain_tags: tuple[str, ...] = ()  # tags without a value (Glance image tags); a protect tag here protects too

    @property
    def published(self) -> bool:
        """Every publish step completed: the published tag, set last, is on this copy."""
        return is_published(self.tags)

    def deprecated(self, now: datetime | None = None) -> bool:
        return self.deprecated_at is not None and self.deprecated_at <= (now or utcnow())

    @property
    def build_time(self) -> datetime:
        """When it was built: the metadata's build timestamp, else the cloud's creation time."""
        built = self.metadata.built_at() if self.metadata else None
        return built or self.created_at

    def to_json(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "cloud": self.cloud,
            "region": self.region,
            "image_id": self.image_id,
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "state": self.state,
            "deprecated_at": self.deprecated_at.isoformat() if self.deprecated_at else None,
            "public": self.public,
            "os": meta.os if meta else None,
            "kubernetes_version": meta.kubernetes_version if meta else None,
            "kubernetes_minor": meta.kubernetes_minor if meta else None,
            "arch": meta.arch if meta else None,
            "build_key": meta.build_key if meta else None,
            "published": self.published,
            "metadata": meta.to_tags() if meta else {},
            # a local output's files (the local catalogue: the disk, then the files beside it)
            **({"files": [self.extra["path"], *self.extra.get("other_files", [])]} if "path" in self.extra else {}),
        }


@dataclass(frozen=True)
class ImageFilter:
    """What `list_images` returns; None matches anything. Only our images unless include_foreign."""

    os: str | None = None
    kubernetes_minor: str | None = None
    arch: str | None = None
    build_key: str | None = None
    region: str | None = None
    include_foreign: bool = False

    def matches(self, record: ImageRecord) -> bool:
        if self.region is not None and record.region != self.region:
            return False
        meta = record.metadata
        if meta is None:
            return self.include_foreign and (self.os, self.kubernetes_minor, self.arch, self.build_key) == (None,) * 4
        return all(want is None or want == have for want, have in (
            (self.os, meta.os), (self.kubernetes_minor, meta.kubernetes_minor), (self.arch, meta.arch),
            (self.build_key, meta.build_key)))


class ImageStore(abc.ABC):
    """Where images of one cloud live. Constructed with that cloud's settings from the matrix.

    Publishing and reconciling note each change they make as one line (``changes``); on a
    dry run (``dry_run``) they note it and do not make it.
    """

    cloud: str
    dry_run: bool = False
    title: ClassVar[str] = ""  # how messages name the cloud ("AWS"); its name when empty
    # The settings field `prune --region` replaces (a list of regions); None: not pruned by region.
    region_setting: ClassVar[str | None] = None

    @property
    def changes(self) -> list[str]:
        return self.__dict__.setdefault("_changes", [])  # type: ignore[no-any-return]

    def change(self, region: str, subject: str, what: str) -> bool:
        """Note '<cloud> <region> <subject>: <what>'; False on a dry run (the caller then skips the write)."""
        self.changes.append(f"{self.cloud} {region} {subject}: {what}")
        return not self.dry_run

    def reconcile(self, records: Sequence[ImageRecord], dry_run: bool = False) -> list[str]:
        """Bring the existing images of one build (its records, one per region) to what the settings
        declare now, without building anything; returns the changes, one line each ([] when all is
        in place). Every step is idempotent, the published tag is set last."""
        self.dry_run = dry_run
        start = len(self.changes)
        try:
            if records:
                self._reconcile(list(records))
        finally:
            self.dry_run = False
        return self.changes[start:]

    @abc.abstractmethod
    def _reconcile(self, records: list[ImageRecord]) -> None:
        """reconcile's steps for this cloud; records is never empty and shares one build key."""

    def subject(self, record: ImageRecord) -> str:
        """How change lines name an image."""
        return record.image_id

    def mark_published(self, records: Sequence[ImageRecord]) -> None:
        """The last step: the published tag on every copy that lacks it."""
        for record in records:
            if not record.published and self.change(record.region, self.subject(record), f"tagged {PUBLISHED_TAG}"):
                self.tag(record, {PUBLISHED_TAG: PUBLISHED_VALUE})

    @abc.abstractmethod
    def publish(self, artifact: Artifact) -> dict[str, str]:
        """Make the artifact's image available as configured: in every region, tagged, shared.

        Idempotent: images already published for the artifact's build key are found and
        completed, never duplicated. Returns region -> image id.
        """

    @abc.abstractmethod
    def list_images(self, filters: ImageFilter | None = None) -> list[ImageRecord]:
        """Images in every configured region, newest first."""

    def find_by_build_key(self, build_key: str, region: str | None = None) -> list[ImageRecord]:
        """The images (one per region) built from this build key; empty when none."""
        return self.list_images(ImageFilter(build_key=build_key, region=region))

    @abc.abstractmethod
    def tag(self, image: ImageRecord, tags: dict[str, str]) -> None:
        """Add or overwrite tags (properties) on the image, and on its snapshots where it has them."""

    @abc.abstractmethod
    def copy_to_regions(self, image: ImageRecord, regions: Sequence[str]) -> dict[str, str]:
        """Copies of the image (with its tags) in these regions; existing copies are reused."""

    @abc.abstractmethod
    def share(self, image: ImageRecord, principals: Sequence[str] = (), public: bool = False) -> None:
        """Make the image launchable exactly by these accounts/projects (and everyone if public)."""

    @abc.abstractmethod
    def deprecate(self, image: ImageRecord, when: datetime, end_of_life: datetime | None = None) -> None:
        """Hide the image from searches from `when` on; it stays launchable.

        ``end_of_life``: when retention may take the next step (now plus the grace period);
        stores with a field for it (Azure's endOfLifeDate, GCE's deprecated.obsolete) record it."""

    def obsolete(self, image: ImageRecord, when: datetime, end_of_life: datetime | None = None) -> None:
        """Refuse new uses of the deprecated image from `when` on (clouds with `Cloud.obsolete_stage` only)."""
        raise CloudError(f"{self.cloud}: images have no obsolete stage | fix: this is a bug, please report it")

    @abc.abstractmethod
    def delete(self, image: ImageRecord) -> list[str]:
        """Delete the image and what only it uses (AMI snapshots); returns what was deleted.

        This deletes for real: dry runs and policy belong to the retention layer.
        """

    def in_use(self, image: ImageRecord) -> list[str] | None:
        """What refers to the image (instances, templates, servers); None when it cannot be checked."""
        return None

    def check_access(self) -> None:
        """Raise a CloudError (one line, naming the cloud and the fix) unless the credentials work.

        Cheap and quick: `build` calls it for every selected cloud before anything boots.
        The default lists the images of a build key nobody has; stores override it.
        """
        self.find_by_build_key("0" * 64)

    def lock_key(self) -> str:
        """Which account a prune works on (two prunes of one key never run at once): the catalogue
        path, else the cloud and the settings that name the account."""
        root = getattr(self, "root", None)
        if root is not None:
            return f"{self.cloud}:{Path(root).resolve()}"
        settings = getattr(self, "settings", None)
        identity = [str(getattr(settings, name)) for name in ("cloud", "project_id", "resource_group", "gallery")
                    if getattr(settings, name, None)]
        return f"{self.cloud}:{'/'.join(identity) or 'default'}"

    # -- the SBOM and provenance beside the image (attest.py) -----------------------------
    # A store that keeps them names its settings field (an object store's bucket) and its URL scheme,
    # and implements _put_object and _get_object; the object's key is <sbom_prefix><image name><suffix>.
    attestation_setting: ClassVar[str | None] = None
    attestation_scheme: ClassVar[str] = ""

    def attestation_bucket(self) -> str | None:
        settings = getattr(self, "settings", None)
        return getattr(settings, self.attestation_setting, None) if self.attestation_setting else None

    def attestation_key(self, image_name: str, kind: str) -> str:
        prefix = str(getattr(getattr(self, "settings", None), "sbom_prefix", "") or "")
        return f"{prefix}{image_name}{ATTESTATION_FILES[kind]}"

    def attestation_url(self, image_name: str, kind: str) -> str:
        bucket = self.attestation_bucket() or f"<{self.attestation_setting}>"
        return f"{self.attestation_scheme}://{bucket}/{self.attestation_key(image_name, kind)}"

    def attestation_unset(self, image: str, sbom_sha256: str = "") -> str:
        """One line: this image's SBOM is not kept, where it would be and how to configure it."""
        if self.attestation_setting is None:
            digest = f", only its sha256 {sbom_sha256} in the image's metadata" if sbom_sha256 else ""
            return (f"{image}: {self.display_name()} keeps no SBOM document beside its images yet{digest} "
                    f"| fix: take <image name>{SBOM_SUFFIX} from the build's cell directory")
        return (f"{image}: no SBOM kept: {self.attestation_settings()} is not set (it would be at "
                f"{self.attestation_url(image, 'sbom')}) | fix: set {self.attestation_settings()} "
                "in the matrix, pass it with -m, and build or publish again")

    def attestation_settings(self) -> str:
        """The matrix setting that says where SBOMs are kept, as messages name it."""
        return f"clouds.{self.cloud}.{self.attestation_setting}"

    def store_attestations(self, artifact: Artifact, region: str) -> None:
        """The artifact's SBOM and provenance (its files with those suffixes) into the configured bucket;
        nothing when none is configured or the build wrote none."""
        if self.attestation_bucket() is None:
            return
        for kind, suffix in ATTESTATION_FILES.items():
            found = next((Path(f) for f in artifact.files if f.endswith(suffix) and Path(f).is_file()), None)
            if found is None:
                continue
            url = self.attestation_url(artifact.image_name, kind)
            data = found.read_bytes()
            if self._get_object(self.attestation_key(artifact.image_name, kind)) == data:
                continue
            if self.change(region, artifact.image_name, f"{kind} stored at {url}"):
                self._put_object(self.attestation_key(artifact.image_name, kind), data)

    def read_attestation(self, record: ImageRecord, kind: str) -> tuple[bytes | None, str]:
        """(the document, where it is kept) of an image; (None, the one-line reason) when it is not kept."""
        name = record.name
        if self.attestation_bucket() is None:
            return None, self.attestation_unset(name, record.metadata.sbom_sha256 if record.metadata else "")
        url = self.attestation_url(name, kind)
        return self._get_object(self.attestation_key(name, kind)), url

    def _put_object(self, key: str, data: bytes) -> None:
        raise CloudError(f"{self.cloud}: stores no objects | fix: this is a bug, please report it")

    def _get_object(self, key: str) -> bytes | None:
        """The object's bytes, None when there is no such object."""
        raise CloudError(f"{self.cloud}: stores no objects | fix: this is a bug, please report it")

    @classmethod
    def display_name(cls) -> str:
        return cls.title or cls.cloud

    @classmethod
    def with_regions(cls, settings: Any, regions: Sequence[str]) -> Any:
        """The settings (a model, a dict or None) with these regions in place of the ones they name."""
        if cls.region_setting is None:
            raise UserError(f"{cls.cloud}: its images are not pruned by region")
        model = registry.get(cls.cloud).settings
        return _settings(model, settings).model_copy(update={cls.region_setting: list(dict.fromkeys(regions))})

    @classmethod
    def default_regions(cls) -> list[str]:
        """The regions the settings name when the matrix declares none; [] when not pruned by region."""
        return list(getattr(registry.get(cls.cloud).settings(), cls.region_setting)) if cls.region_setting else []


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def check_clouds() -> None:
    """One line for the first cloud folder that does not load (registry.check)."""
    registry.check()


def store_clouds() -> tuple[str, ...]:
    """Every image catalogue: the local one and each cloud's (clouds whose images live in another
    catalogue, such as qemu's in the local one, are aliases of it)."""
    return tuple(registry.stores())


def cloud_aliases() -> dict[str, str]:
    """A cloud whose images live in another catalogue -> that catalogue ("qemu" -> "local")."""
    return registry.aliases()


def unmanaged_clouds() -> tuple[str, ...]:
    """The clouds whose images imagebuilder does not manage yet (registry.Cloud.store_path)."""
    return tuple(registry.unmanaged())


def not_managed_notice(cloud: str, verbs: str = "list and prune") -> str:
    """What a verb prints for an unmanaged cloud it skips (`images list` and `prune` for each one the
    matrix declares, `publish` for each one of its cells), before going on with the others."""
    return f"imagebuilder: {registry.get(cloud).not_managed()}; {verbs} skip{'' if ' and ' in verbs else 's'} it"


def canonical_cloud(cloud: str) -> str:
    cloud = registry.aliases().get(cloud, cloud)
    if cloud in registry.unmanaged():
        raise UserError(f"{registry.get(cloud).not_managed()}; list, resolve and prune cannot ask it "
                        f"| fix: look there, or name another cloud: {', '.join(store_clouds())}")
    if cloud not in registry.stores():
        raise UserError(f"cloud '{cloud}' has no image store | fix: use one of {', '.join(store_clouds())}")
    return cloud


def store_for(cloud: str, settings: Any = None, **options: Any) -> ImageStore:
    """The image store of a cloud, configured by its matrix settings (a model or a dict).

    Credentials come from the environment or the SDK's own config files, never from here.
    """
    cloud = canonical_cloud(cloud)
    owner = next((c for c in registry.clouds().values() if c.catalogue == cloud and c.name == cloud), None)
    arguments = [] if owner is None else [_settings(owner.settings_model(), settings)]
    return store_class(cloud)(*arguments, **options)


def store_class(cloud: str) -> type[ImageStore]:
    """The store class of a cloud, imported now (its SDK is an optional extra)."""
    cloud = canonical_cloud(cloud)
    try:
        return registry.load_object(registry.stores()[cloud])  # type: ignore[no-any-return]
    except ImportError as exc:
        extra = registry.extras().get(cloud, cloud)
        raise UserError(f"the {cloud} image store cannot load ({exc}) "
                        f"| fix: pip install 'imagebuilder[{extra}]'") from None


def region_pruned_stores() -> list[type[ImageStore]]:
    """The store classes `prune --region` applies to, of the stores whose SDK is installed."""
    found = []
    for cloud in store_clouds():
        try:
            found.append(store_class(cloud))
        except UserError:
            continue
    return [cls for cls in found if cls.region_setting is not None]


def _settings(model: Any, settings: Any) -> Any:
    """The settings model from a model, a dict (Cell.settings) or None (the defaults)."""
    from pydantic import ValidationError

    if isinstance(settings, model):
        return settings
    known = {name: value for name, value in dict(settings or {}).items() if name in model.model_fields}
    try:
        return model(**known)
    except ValidationError as exc:
        error = exc.errors()[0]
        field_name = ".".join(str(part) for part in error["loc"])
        raise UserError(f"{model.__name__}: {field_name}: {error['msg']} "
                        "| fix: declare the cloud in the matrix and pass it with -m") from None


def newest(records: Sequence[ImageRecord], include_deprecated: bool = False) -> ImageRecord | None:
    """The most recently built image, skipping deprecated ones (as GCP image families resolve)."""
    now = utcnow()
    candidates = [r for r in records if include_deprecated or not r.deprecated(now)]
    candidates = [r for r in candidates if r.state in ("available", "active")]
    return max(candidates, key=lambda r: (r.build_time, r.created_at, r.image_id), default=None)


def sort_newest_first(records: list[ImageRecord]) -> list[ImageRecord]:
    return sorted(records, key=lambda r: (r.build_time, r.created_at, r.image_id), reverse=True)
