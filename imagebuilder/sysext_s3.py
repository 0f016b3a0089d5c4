"""Sysext images uploaded to an S3 bucket (`sysext build --s3-bucket`): the options and the upload.

The bucket's SHA256SUMS is merged with ours, so the images of other minors stay listed; with a
signer, the merged manifest is what gets signed (SHA256SUMS.gpg must match the bucket's SHA256SUMS).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from imagebuilder import sysext as sx
from imagebuilder import sysext_signing as signing
from imagebuilder.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def upload_options(command: F) -> F:
    """--s3-bucket and --s3-prefix, for the command that uploads."""
    command = click.option("--s3-prefix", default="", help="Key prefix in the bucket, e.g. sysext/.")(command)
    return click.option("--s3-bucket", default=None, help="Also upload to this S3 bucket (credentials and "
                        "AWS_ENDPOINT_URL from the environment).")(command)


def upload(result: sx.SysextResult, output_dir: Path, bucket: str, prefix: str,
           signer: signing.Signer | None = None) -> list[str]:
    """Upload the image and companions, then SHA256SUMS merged with the bucket's (other minors stay)
    and, with a signer, its signature."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise UserError("--s3-bucket needs boto3 | fix: pip install 'imagebuilder[aws]'") from None
    client = boto3.client("s3")
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    sums_key = f"{prefix}SHA256SUMS"
    uploaded: list[str] = []
    try:
        for path in result.files:
            if path.name in sx.MANIFEST_NAMES:
                continue
            key = prefix + path.name
            client.upload_file(str(path), bucket, key)
            uploaded.append(key)
        merged = merge_sha256sums(_s3_text(client, bucket, sums_key), (output_dir / "SHA256SUMS").read_text())
        signature = sign_text(merged, signer) if signer is not None else None
        client.put_object(Bucket=bucket, Key=sums_key, Body=merged.encode(), ContentType="text/plain")
        uploaded.append(sums_key)
        if signature is not None:
            signature_key = f"{prefix}{signing.SIGNATURE_NAME}"
            client.put_object(Bucket=bucket, Key=signature_key, Body=signature,
                              ContentType="application/pgp-signature")
            uploaded.append(signature_key)
    except (BotoCoreError, ClientError) as error:
        raise UserError(f"s3://{bucket}/{prefix}: upload failed ({error}) "
                        "| fix: check the bucket, the credentials and AWS_ENDPOINT_URL") from None
    return uploaded


def _s3_text(client: object, bucket: str, key: str) -> str:
    from botocore.exceptions import ClientError

    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()  # type: ignore[attr-defined]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return ""
        raise


def merge_sha256sums(existing: str, ours: str) -> str:
    """Entries of both manifests, ours winning for the same file name, sorted by name."""
    entries: dict[str, str] = {}
    for text in (existing, ours):
        for line in text.splitlines():
            digest, sep, name = line.partition("  ")
            if sep and name:
                entries[name.lstrip("*")] = digest
    return "".join(f"{entries[name]}  {name}\n" for name in sorted(entries))


def sign_text(sums: str, signer: signing.Signer) -> bytes:
    """The detached signature of a SHA256SUMS text (the merged one, which exists nowhere on disk)."""
    with tempfile.TemporaryDirectory(prefix="imagebuilder-sums-") as scratch:
        (Path(scratch) / signing.SUMS_NAME).write_text(sums)
        return signing.sign_sums(signer, Path(scratch)).read_bytes()
