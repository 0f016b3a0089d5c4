"""What a build writes beside its image to say what is in it and how it was made.

- ``<image name>.sbom.cdx.json``: the SBOM, read from the built root tree (sbom.py);
- ``<image name>.provenance.dsse.json``: the in-toto statement of the build (provenance.py),
  signed when a key is configured.

The offline build calls ``write_sbom_of_tree`` once the roles have run, then ``write_provenance``
once the disk is written. A Packer build gathers the same contents in the image and downloads them
(sbom.py); once Packer is done, ``attest_packer_build`` writes both from that file, beside the image
file where the build made one (qemu) and in the cell directory otherwise (the clouds). The local
catalogue keeps both next to the qcow2, the clouds' stores where their settings say; the image's
metadata carries the SBOM's sha256 (``imagebuilder-sbom-sha256``).

A cloud image has no file to digest: its subject in the statement is the image's name, with the
sha256 of its ids (canonical JSON, ``image_ids_digest``) and the ids themselves as an annotation.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imagebuilder import __version__, provenance, sbom
from imagebuilder.config import ANSIBLE_DIR
from imagebuilder.errors import UserError

MANIFEST = "packer-manifest.json"
UNSIGNED_NOTE = (f"provenance written unsigned (no signing key: set ${provenance.KEY_ENV} to a PEM private key, "
                 f"or ${provenance.KEY_FILE_ENV} to its file); 'images verify' will refuse it")


@dataclass(frozen=True)
class Attestation:
    path: Path
    signed: bool
    key_id: str = ""


def sbom_path(output_dir: Path, image_name: str) -> Path:
    return output_dir / f"{image_name}{sbom.SBOM_SUFFIX}"


def provenance_path(output_dir: Path, image_name: str) -> Path:
    return output_dir / f"{image_name}{provenance.PROVENANCE_SUFFIX}"


def write_sbom_of(contents: sbom.ImageContents, target: Path, cell: Any, image_name: str, timestamp: str) -> str:
    """The SBOM of an image's contents written to ``target``; its sha256."""
    document = sbom.sbom_document(contents, image_name=image_name, build_key=cell.build_key, timestamp=timestamp,
                                  downloads=cell.downloads)
    return sbom.write_sbom(document, target)


def write_sbom_of_tree(tree: Path, target: Path, cell: Any, image_name: str, timestamp: str) -> str:
    """The SBOM of the built tree written to ``target``; its sha256."""
    return write_sbom_of(sbom.contents_of_tree(tree), target, cell, image_name, timestamp)


def image_ids_digest(image_ids: dict[str, str]) -> str:
    """The digest a cloud image's subject carries: of its ids (region -> id) as canonical JSON."""
    return hashlib.sha256(json.dumps(image_ids, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_statement(cell: Any, *, image: Path | None, image_ids: dict[str, str], metadata: dict[str, str],
                    sbom_file: Path, sbom_sha256: str, git_commit: str, base_key: str, invocation_id: str,
                    started: datetime, finished: datetime, builder: str, image_name: str = "") -> dict[str, Any]:
    """The in-toto statement of one cell's build: its inputs, and the image and SBOM it made.

    ``image``: the image's file, or None for a cloud image (named ``image_name``, see the module)."""
    from imagebuilder.planner import templates_digest, tree_digest

    subject_name, subject_sha256 = ((image.name, sha256_of(image)) if image is not None
                                    else (image_name, image_ids_digest(image_ids)))
    subjects = [
        provenance.Subject(subject_name, subject_sha256,
                           {provenance.IMAGE_IDS: image_ids, provenance.IMAGE_METADATA: metadata}),
        provenance.Subject(sbom_file.name, sbom_sha256),
    ]
    dependencies: list[dict[str, Any]] = [
        {"name": f"download:{name}", "uri": download.url, "digest": {"sha256": download.sha256}}
        for name, download in sorted(cell.downloads.items())
    ]
    dependencies += [
        {"name": f"image:{image_ref['name']}", "digest": {"sha256": str(image_ref["digest"]).removeprefix("sha256:")}}
        for image_ref in cell.images if image_ref.get("digest")
    ]
    base = {key: value for key, value in cell.base_image.items() if key != "resolved"}
    dependencies += [
        {"name": "base-image", "uri": cell.base_source.get("url", "") or str(base.get("url", "")),
         # the digest of the reference and what it resolved to (canonical JSON), as the build key hashes it
         "digest": {"sha256": hashlib.sha256(json.dumps(cell.base_image, sort_keys=True).encode()).hexdigest()},
         "annotations": {"reference": base, "resolved": cell.base_image.get("resolved"), "baseDiskKey": base_key}},
        {"name": "templates", "digest": {"sha256": templates_digest(cell.cloud)}},
        {"name": "ansible", "digest": {"sha256": tree_digest(ANSIBLE_DIR)}},
        {"name": "imagebuilder", "uri": "git+imagebuilder", "digest": {"gitCommit": git_commit}},
    ]
    external = {"cell": cell.id, "buildKey": cell.build_key, "buildInputs": dict(cell.inputs), "cloud": cell.cloud,
                "os": cell.os, "arch": cell.arch, "variant": cell.variant or "", "versions": dict(cell.versions),
                "ansibleVars": cell.ansible_vars}
    internal = {"imagebuilderVersion": __version__, "builder": builder}
    return provenance.statement(subjects, external, internal, dependencies,
                                builder_id=f"urn:imagebuilder:{builder}:{platform.node() or 'host'}",
                                invocation_id=invocation_id, started_on=_iso(started), finished_on=_iso(finished))


def write_provenance(statement: dict[str, Any], target: Path) -> Attestation:
    """The statement in a DSSE envelope, signed with the configured key if there is one."""
    key = provenance.configured_key()
    provenance.write_envelope(provenance.envelope(statement, key), target)
    if key is None:
        return Attestation(target, signed=False)
    return Attestation(target, signed=True, key_id=provenance.key_id(key.public_key()))


def attest_packer_build(job: Any, artifact: Any) -> Any:
    """The SBOM and provenance of a Packer build, from the contents its image gathered (sbom.INPUT_FILE
    in the cell directory); the artifact with their digest in its metadata and the files added.

    Unchanged when the build downloaded no such file (a template without the SBOM step)."""
    source = job.directory / sbom.INPUT_FILE
    if not source.is_file():
        _log(job, f"no {sbom.INPUT_FILE} from the image (its template has no SBOM step): no SBOM or provenance")
        return artifact
    image = _image_file(artifact, job.directory)
    output = image.parent if image is not None else job.directory
    name = artifact.image_name
    timestamp = artifact.metadata.build_timestamp
    sbom_file = sbom_path(output, name)
    sbom_sha256 = write_sbom_of(sbom.contents_of_file(source), sbom_file, job.cell, name, timestamp)
    metadata = replace(artifact.metadata, sbom_sha256=sbom_sha256)
    tags = metadata.to_tags()
    statement = build_statement(
        job.cell, image=image, image_name=name, image_ids=_image_ids(artifact, image), metadata=tags, sbom_file=sbom_file,
        sbom_sha256=sbom_sha256, git_commit=metadata.git_commit, base_key="",
        invocation_id=_packer_run_uuid(job.directory) or str(uuid.uuid4()),
        started=datetime.fromtimestamp(artifact.started_at or time.time(), timezone.utc),
        finished=datetime.fromtimestamp(artifact.finished_at or time.time(), timezone.utc), builder="packer")
    signed = write_provenance(statement, provenance_path(output, name))
    _log(job, f"SBOM {sbom_file.name} from the image's package database ({sbom_sha256[:16]}); "
              + (f"provenance signed with key {signed.key_id[:16]}" if signed.signed else UNSIGNED_NOTE))
    _record_in_manifest(job.directory, tags, [sbom_file, signed.path])
    return replace(artifact, metadata=metadata, files=[*artifact.files, str(sbom_file), str(signed.path)])


def _image_file(artifact: Any, directory: Path) -> Path | None:
    """The image file a local build wrote (the first file of the manifest), None for a cloud image."""
    for name in artifact.files:
        path = Path(name) if Path(name).is_absolute() else directory / name
        if path.is_file():
            return path
    return None


def _image_ids(artifact: Any, image: Path | None) -> dict[str, str]:
    """The ids the image will have: a local file's in the local catalogue (as the offline build names
    it), a cloud image's as Packer made it."""
    from imagebuilder.clouds.local import REGION, local_image_id

    return {REGION: local_image_id(artifact.build_key)} if image is not None else dict(artifact.ids)


def _packer_run_uuid(directory: Path) -> str:
    try:
        return str(json.loads((directory / MANIFEST).read_text()).get("last_run_uuid") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _record_in_manifest(directory: Path, tags: dict[str, str], side_files: list[Path]) -> None:
    """Packer's manifest as the offline build writes it: the metadata with the SBOM digest, the side files listed."""
    from imagebuilder.atomicfile import write_atomically

    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    build = manifest["builds"][-1]
    build["custom_data"]["metadata"] = json.dumps(tags, separators=(",", ":"))
    listed = {entry.get("name") for entry in build.get("files") or []}
    build["files"] = [*(build.get("files") or []),
                      *({"name": str(p.relative_to(directory)) if p.is_relative_to(directory) else str(p),
                         "size": p.stat().st_size} for p in side_files if str(p) not in listed)]
    write_atomically(path, json.dumps(manifest, indent=2) + "\n")


def _log(job: Any, text: str) -> None:
    with job.log_path.open("a") as log:
        log.write(f"==> imagebuilder: {text}\n")


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- finding an image's SBOM and provenance -------------------------------------------------
# The local catalogue keeps them beside the image file; a cloud's store in its object store where its
# settings name one (ImageStore.read_attestation), else it says where they would be.


@dataclass(frozen=True)
class Attested:
    """An image with what was kept beside it: each document's bytes (None when absent) and where it is."""

    record: Any  # ImageRecord
    store: Any  # its ImageStore
    sbom: bytes | None
    sbom_where: str
    provenance: bytes | None
    provenance_where: str
    image_file: Path | None = None  # a local image's file; None for a cloud image


def attested_image(target: str, stores: list[Any] | None = None) -> Attested:
    """An image by id, or the newest one of a cell, with its SBOM and provenance.

    ``stores``: where to look, the local catalogue first (``images`` asks the matrix's clouds too);
    a cloud that cannot be asked is skipped when the image is found elsewhere, named otherwise."""
    from imagebuilder.clouds import newest, store_for

    stores = stores if stores is not None else [store_for("local")]
    unreachable: list[str] = []
    for store in stores:
        try:
            records = store.list_images()
        except UserError as error:
            unreachable.append(str(error).split(" | ")[0])
            continue
        found = next((r for r in records if r.image_id == target), None)
        if found is None:
            found = newest([r for r in records if r.metadata is not None and r.metadata.cell == target])
        if found is not None:
            return _attested(store, found)
    where = ", ".join(store.display_name() for store in stores)
    skipped = f"; not asked: {'; '.join(unreachable)}" if unreachable else ""
    raise UserError(f"{target}: no image or cell of that name in {where}{skipped} "
                    "| fix: see 'imagebuilder images list' (pass -m with the matrix whose clouds keep it)")


def stores_to_ask(target: str, declared: list[tuple[str, Any]]) -> list[Any]:
    """Where an image's SBOM may be: the local catalogue, then (unless the id is the local catalogue's)
    each declared (store cloud, settings) whose SDK is installed."""
    from imagebuilder.clouds import store_for
    from imagebuilder.clouds.local import local_image_id

    stores = [store_for("local")]
    if target.startswith(local_image_id("")):
        return stores
    for name, settings in declared:
        if name == "local":
            continue
        try:
            stores.append(store_for(name, settings))
        except UserError:  # its SDK is not installed: its images cannot be asked
            continue
    return stores


def _attested(store: Any, record: Any) -> Attested:
    if "path" in record.extra:  # the local catalogue: the files beside the image
        found = {kind: (Path(record.extra[kind]) if record.extra.get(kind) else None) for kind in ("sbom", "provenance")}
        return Attested(record, store,
                        *_read(found["sbom"], f"{record.image_id}: its build wrote no SBOM (built before SBOMs) "
                                              "| fix: build the cell again"),
                        *_read(found["provenance"], "none recorded"), image_file=Path(record.extra["path"]))
    sbom_data, sbom_where = store.read_attestation(record, "sbom")
    provenance_data, provenance_where = store.read_attestation(record, "provenance")
    return Attested(record, store, sbom_data, sbom_where, provenance_data, provenance_where)


def _read(path: Path | None, absent: str) -> tuple[bytes | None, str]:
    if path is None:
        return None, absent
    return (path.read_bytes() if path.is_file() else None), str(path)


def sbom_of(target: str, stores: list[Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """(the image, its SBOM document) of an image id or a cell's newest image."""
    found = attested_image(target, stores)
    if found.sbom is None:
        where = found.sbom_where
        if " | fix: " in where:  # the store's reason: not kept, and how to keep it
            raise UserError(where)
        raise UserError(f"{found.record.image_id}: no SBOM at {where} (built or published before SBOMs were kept) "
                        "| fix: build the cell again")
    return found.record, sbom.parse_sbom(found.sbom, found.sbom_where)


# --- verification -------------------------------------------------------------------------


def verify_image(found: Attested, public_key: Any) -> str:
    """Check an image against its signed provenance.

    The signature, then that the image's metadata, SBOM and file (a local image's) or ids (a cloud
    image's) are what the statement says. Returns the key id that signed; raises ProvenanceError
    with one line naming what differs.
    """
    fail = provenance.ProvenanceError
    record = found.record
    if found.provenance is None:
        where = found.provenance_where
        raise fail(where if " | fix: " in where else
                   f"{record.image_id}: no provenance recorded beside the image ({where}) "
                   "| fix: build and publish it again")
    where = found.provenance_where
    statement = provenance.open_envelope_bytes(found.provenance, where, public_key)
    if statement.get("_type") != provenance.STATEMENT_TYPE or statement.get("predicateType") != provenance.PREDICATE_TYPE:
        raise fail(f"{where}: not an in-toto v1 statement with a SLSA v1 predicate")
    subjects = [s for s in statement.get("subject", []) if isinstance(s, dict)]
    image_subject = next((s for s in subjects if provenance.IMAGE_IDS in s.get("annotations", {})), None)
    if image_subject is None:
        raise fail(f"{where}: the statement names no image subject")
    annotations = image_subject["annotations"]
    ids = dict(annotations[provenance.IMAGE_IDS])
    # What publish makes after the statement (a cloud's copies in other regions, Azure's gallery version of
    # the managed image) is not named in it: such an image is the build's by its metadata (build key and
    # build time among it), checked whole below, and by the store keeping its documents under its name.
    if record.image_id not in ids.values() and found.image_file is not None:
        raise fail(f"{record.image_id}: not an image id the provenance names ({', '.join(ids.values())})")

    if record.metadata is None:
        raise fail(f"{record.image_id}: the image has no imagebuilder metadata")
    recorded = record.metadata.to_tags()
    attested = dict(annotations.get(provenance.IMAGE_METADATA, {}))
    for key in sorted(recorded.keys() | attested.keys()):
        if recorded.get(key) != attested.get(key):
            raise fail(f"{record.image_id}: metadata {key} is {recorded.get(key, '(absent)')!r}, "
                       f"the provenance says {attested.get(key, '(absent)')!r}")

    if found.sbom is None:
        raise fail(f"{record.image_id}: no SBOM beside the image ({found.sbom_where})")
    actual = hashlib.sha256(found.sbom).hexdigest()
    sbom_subject = next((s for s in subjects if str(s.get("name", "")).endswith(sbom.SBOM_SUFFIX)), None)
    attested_sbom = (sbom_subject or {}).get("digest", {}).get("sha256", "(absent)")
    if actual != attested_sbom:
        raise fail(f"{found.sbom_where}: the SBOM has sha256 {actual}, the provenance says {attested_sbom}")
    if record.metadata.sbom_sha256 != actual:
        raise fail(f"{record.image_id}: metadata imagebuilder-sbom-sha256 is {record.metadata.sbom_sha256!r}, "
                   f"the SBOM's sha256 is {actual}")

    attested_image = image_subject.get("digest", {}).get("sha256", "(absent)")
    if found.image_file is None:
        if attested_image != image_ids_digest(ids):
            raise fail(f"{where}: the image subject's digest is not that of the ids it names")
        return provenance.key_id(public_key)
    image_file = found.image_file
    if image_file.name != image_subject.get("name"):
        raise fail(f"{image_file}: the provenance is of {image_subject.get('name')}, not this file")
    actual_image = sha256_of(image_file) if image_file.is_file() else "(missing)"
    if actual_image != attested_image:
        raise fail(f"{image_file}: the image has sha256 {actual_image}, the provenance says {attested_image}")
    return provenance.key_id(public_key)
