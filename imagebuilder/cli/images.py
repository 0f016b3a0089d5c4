"""`imagebuilder images list|resolve|sbom|diff|verify`.

- ``images list [--cloud C] [--os O] [--k8s M] [--region R] [--output json]``: every image
  with its metadata, from the local catalogue and every cloud the matrix declares.
- ``images resolve --cloud C --os O --k8s 1.31 [--region R] [--arch A]``: the newest image id
  that is not deprecated, as a Cluster API machine template needs it.
- ``images sbom CELL|IMAGE_ID``: the image's SBOM (CycloneDX 1.5 JSON), as its build wrote it, from
  the local catalogue or the object store a cloud's settings name (``sbom_bucket``).
- ``images diff A B``: the package changes from image A to image B (added, removed, changed versions).
- ``images verify IMAGE_ID --key PUB``: the image's signed provenance checked against the image,
  its metadata and its SBOM.

Which images have an SBOM and provenance, and where they are kept: ``imagebuilder.attest``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from imagebuilder.cli import common
from imagebuilder.cli.options import (cloud_option, k8s_option, optional_matrix_option, os_option,
                                      output_format_option, strict_option)
from imagebuilder.clouds import (
    ImageFilter,
    ImageRecord,
    ImageStore,
    canonical_cloud,
    newest,
    sort_newest_first,
    store_clouds,
    store_for,
)
from imagebuilder.cloudscope import CloudScope, explicit_clouds
from imagebuilder.config import DEFAULT_MATRIX, load_matrix
from imagebuilder.errors import UserError

MINOR = re.compile(r"^1\.\d{1,3}$")


def stores_for(cloud: str | None, matrix_path: Path | None) -> list[ImageStore]:
    """The stores to ask: one cloud, or the local catalogue plus every store cloud the matrix declares."""
    return [store_for(name, settings) for name, settings in store_settings(cloud, matrix_path)]


def store_settings(cloud: str | None, matrix_path: Path | None) -> list[tuple[str, Any]]:
    """(store cloud, its matrix settings) to ask: one cloud, or local plus every cloud the matrix declares."""
    if cloud is not None:
        name = canonical_cloud(cloud)
        return [(name, _matrix_settings(matrix_path, required=matrix_path is not None).get(name))]
    settings = _matrix_settings(matrix_path, required=matrix_path is not None, say_unmanaged=True)
    return [(name, settings.get(name)) for name in store_clouds() if name == "local" or name in settings]


def _matrix_settings(matrix_path: Path | None, required: bool, say_unmanaged: bool = False) -> dict[str, Any]:
    """Cloud name -> settings from the matrix; {} when there is no matrix to read. With say_unmanaged,
    one line on stderr for each declared cloud whose images are not managed yet."""
    path = matrix_path or Path(DEFAULT_MATRIX)
    if not path.exists():
        if required:
            raise UserError(f"{path}: no such matrix file | fix: pass -m with the path of your matrix.yaml")
        return {}
    clouds = load_matrix(path).matrix.clouds
    if say_unmanaged:
        common.say_unmanaged(clouds.declared())
    return {name: getattr(clouds, name) for name in clouds.declared() if name in store_clouds()}


def _check_minor(minor: str | None) -> str | None:
    if minor is not None and not MINOR.match(minor):
        raise UserError(f"--k8s {minor}: not a Kubernetes minor | fix: write it as 1.31")
    return minor


matrix_option = optional_matrix_option("The matrix whose cloud settings say where to look")


@click.group("images")
def images() -> None:
    """List and resolve published images (every cloud's image store, and the local catalogue)."""


@images.command("list")
@matrix_option
@cloud_option(default=None, help="Only this cloud (default: local and the matrix's clouds).")
@os_option(default=None, help="Only this OS, e.g. debian-12.")
@k8s_option(default=None, help="Only this Kubernetes minor, e.g. 1.31.")
@click.option("--region", default=None, help="Only this region.")
@output_format_option(help="A table in a terminal, JSON otherwise.")
@strict_option()
def list_command(matrix_path: Path | None, cloud: str | None, os_id: str | None, minor: str | None,
                 region: str | None, output_format: str | None, strict: bool) -> None:
    """Every image with its metadata, newest first.

    A cloud that cannot be reached is one warning line; the others are listed and the exit
    status is 3 (with --strict, or --cloud naming it, it is an error)."""
    filters = ImageFilter(os=os_id, kubernetes_minor=_check_minor(minor), region=region)
    scope = CloudScope(strict=strict, explicit=explicit_clouds([canonical_cloud(cloud) if cloud else None]))
    records: list[ImageRecord] = []
    for name, settings in store_settings(cloud, matrix_path):
        records.extend(scope.run(name, lambda: store_for(name, settings).list_images(filters), []))
    records = sort_newest_first(records)
    if (output_format or ("table" if sys.stdout.isatty() else "json")) == "json":
        click.echo(json.dumps([record.to_json() for record in records], indent=2))
    else:
        Console(highlight=False, soft_wrap=True).print(_table(records))
    scope.exit()


@images.command("resolve")
@matrix_option
@cloud_option(required=True)
@os_option(required=True, help="e.g. debian-12")
@k8s_option(required=True, help="e.g. 1.31")
@click.option("--region", default=None, help="Needed when the images are in several regions.")
@click.option("--arch", default=None, type=click.Choice(["amd64", "arm64"]), help="Needed when both exist.")
def resolve_command(matrix_path: Path | None, cloud: str, os_id: str, minor: str, region: str | None,
                    arch: str | None) -> None:
    """Print the id of the newest fully published image (not deprecated) for an OS and Kubernetes minor."""
    filters = ImageFilter(os=os_id, kubernetes_minor=_check_minor(minor), arch=arch, region=region)
    (store,) = stores_for(cloud, matrix_path)
    records = store.list_images(filters)
    what = f"--cloud {cloud} --os {os_id} --k8s {minor}"
    for dimension, values in (("region", {r.region for r in records}),
                              ("arch", {r.metadata.arch for r in records if r.metadata})):
        if len(values) > 1:
            raise UserError(f"{what}: images in several {dimension}s ({', '.join(sorted(values))}) "
                            f"| fix: add --{dimension} with one of them")
    found = newest([r for r in records if r.published])  # a half-published image is no one's to launch
    if found is None:
        unpublished = sum(not r.published for r in records)
        detail = (f"{unpublished} built but not fully published" if unpublished else
                  f"{len(records)} deprecated or unavailable" if records else "none published")
        fix = ("run 'imagebuilder publish' to finish publishing" if unpublished else
               "build and publish it, or check 'imagebuilder images list'")
        raise UserError(f"{what}{f' --region {region}' if region else ''}: no usable image ({detail}) | fix: {fix}")
    click.echo(found.image_id)


def _table(records: list[ImageRecord]) -> Table:
    table = Table(title=f"{len(records)} images")
    for column in ("cloud", "region", "image id", "os", "kubernetes", "arch", "built", "state", "build key"):
        table.add_column(column, no_wrap=column in ("image id", "build key"))
    for record in records:
        meta = record.metadata
        state = "deprecated" if record.deprecated() else record.state
        if record.public:
            state += ", public"
        if meta and not record.published:
            state += ", unpublished"
        table.add_row(record.cloud, record.region, record.image_id, meta.os if meta else "-",
                      meta.kubernetes_version if meta else "-", meta.arch if meta else "-",
                      record.build_time.strftime("%Y-%m-%d %H:%M"), state,
                      meta.build_key[:12] if meta else "-")
    return table


# --- SBOM and provenance ---------------------------------------------------


def attestation_stores(target: str, matrix_path: Path | None) -> list[ImageStore]:
    """Where an image's SBOM may be (attest.stores_to_ask): local first, then the matrix's clouds."""
    from imagebuilder.attest import stores_to_ask

    return stores_to_ask(target, store_settings(None, matrix_path))


@images.command("sbom")
@matrix_option
@click.argument("target", metavar="CELL|IMAGE_ID")
def sbom_command(matrix_path: Path | None, target: str) -> None:
    """Print an image's SBOM (CycloneDX 1.5 JSON): a cell's newest image, or an image by id."""
    from imagebuilder.attest import sbom_of
    from imagebuilder.sbom import encode

    _, document = sbom_of(target, attestation_stores(target, matrix_path))
    click.echo(encode(document).decode(), nl=False)


@images.command("diff")
@matrix_option
@click.argument("before", metavar="A")
@click.argument("after", metavar="B")
@output_format_option(help="Lines (+ added, - removed, ~ changed) or JSON.")
def diff_command(matrix_path: Path | None, before: str, after: str, output_format: str | None) -> None:
    """The package changes from image A to image B (each a cell or an image id)."""
    from imagebuilder.attest import sbom_of
    from imagebuilder.sbom import diff

    first, old = sbom_of(before, attestation_stores(before, matrix_path))
    second, new = sbom_of(after, attestation_stores(after, matrix_path))
    changes = diff(old, new)
    if output_format == "json":
        click.echo(json.dumps({"from": first.image_id, "to": second.image_id, "added": changes.added,
                               "removed": changes.removed,
                               "changed": {k: {"from": a, "to": b} for k, (a, b) in changes.changed.items()}},
                              indent=2, sort_keys=True))
        return
    lines = changes.lines()
    click.echo(f"{first.image_id} -> {second.image_id}: {len(changes.added)} added, {len(changes.removed)} removed, "
               f"{len(changes.changed)} changed")
    for line in lines:
        click.echo(line)


@images.command("verify")
@matrix_option
@click.argument("image_id", metavar="IMAGE_ID")
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path),
              help="The PEM public key (Ed25519 or ECDSA) the build's signing key pairs with.")
def verify_command(matrix_path: Path | None, image_id: str, key_path: Path) -> None:
    """Check an image's signed provenance: the signature, and that the image, its metadata and its SBOM
    are what the provenance says. One line naming what differs, exit 2, when they are not."""
    from imagebuilder.attest import attested_image, verify_image
    from imagebuilder.provenance import load_public_key

    key = load_public_key(key_path)
    found = attested_image(image_id, attestation_stores(image_id, matrix_path))
    signer = verify_image(found, key)
    record = found.record
    click.echo(f"{record.image_id}: verified (signed by key {signer[:16]}; image, metadata and SBOM match the provenance)")
