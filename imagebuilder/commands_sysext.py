"""`imagebuilder sysext ...`: build Kubernetes systemd-sysext images, and compare strategies.

Wired into the CLI with ``cli.add_command(sysext)``; ``plan --compare`` calls ``print_comparison``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from imagebuilder import sysext as sx
from imagebuilder.config import DEFAULT_MATRIX, load_matrix
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell, plan

DEFAULT_OUTPUT = Path("build") / "sysext"


@click.group("sysext")
def sysext() -> None:
    """Kubernetes as a systemd-sysext image, for stock OS images (Flatcar, systemd 249+)."""


@sysext.command("build")
@click.option("-m", "--matrix", "matrix_path", type=click.Path(path_type=Path), default=DEFAULT_MATRIX,
              show_default=True, help="The matrix: its versions file and mirrors are used.")
@click.option("--k8s", "minor", default=None, metavar="MINOR",
              help="Kubernetes minor, e.g. 1.31: its pinned patch is built (1.31.4 also accepted if pinned). "
                   "Default: every (minor, arch) of the matrix's cells with strategy sysext.")
@click.option("--arch", default=None, metavar="x86-64|arm64",
              help="Architecture (amd64 also accepted); default x86-64 with --k8s.")
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path), default=DEFAULT_OUTPUT,
              show_default=True, help="Directory the image and its companions are written to.")
@click.option("--base-url", default=None, metavar="URL",
              help="Where the output directory will be served; needed for the sysupdate file and node configs.")
@click.option("--os-id", default=sx.ANY_OS, show_default=True, help="ID= of the release file; _any matches every OS.")
@click.option("--sysext-level", default=None, help="SYSEXT_LEVEL= of the release file (with --os-id).")
@click.option("--no-updates", is_flag=True, help="Node configs without the sysupdate transfer file and timer.")
@click.option("--s3-bucket", default=None,
              help="Also upload to this S3 bucket (credentials and AWS_ENDPOINT_URL from the environment).")
@click.option("--s3-prefix", default="", help="Key prefix in the bucket, e.g. sysext/.")
def build_command(matrix_path: Path, minor: str | None, arch: str | None, output_dir: Path, base_url: str | None,
                  os_id: str, sysext_level: str | None, no_updates: bool, s3_bucket: str | None,
                  s3_prefix: str) -> None:
    """Build kubernetes-vX.Y.Z-ARCH.raw from the pinned, checksum-verified release files."""
    loaded = load_matrix(matrix_path)
    if minor is not None:
        targets = [(sx.resolve_minor(minor, loaded.versions), sx.normalize_arch(arch or "x86-64"))]
    else:
        targets = sx.sysext_targets(plan(loaded))
        if arch is not None:
            targets = [target for target in targets if target[1] == sx.normalize_arch(arch)]
        if not targets:
            raise UserError(f"{matrix_path}: no cell uses strategy sysext{' on ' + arch if arch else ''} "
                            "| fix: pass --k8s, or set strategy: sysext in an override")
    for target_minor, target_arch in targets:
        request = sx.SysextRequest(
            minor=target_minor, arch=target_arch, base_url=base_url, os_id=os_id, sysext_level=sysext_level,
            mirrors=dict(loaded.matrix.mirrors), updates=not no_updates,
        )
        started = time.monotonic()
        result = sx.build(request, loaded.versions, output_dir)
        elapsed = time.monotonic() - started
        click.echo(f"{result.image}  {result.size} bytes  sha256 {result.sha256}  ({elapsed:.1f}s)")
        for path in result.files[1:]:
            click.echo(f"  {path}")
        catalogued = sx.publish_local(result)
        click.echo(f"  catalogued in {catalogued[-1].parent}")
        if s3_bucket:
            for key in upload_s3(result, output_dir, s3_bucket, s3_prefix):
                click.echo(f"  s3://{s3_bucket}/{key}")
    if base_url is None:
        click.echo("(no --base-url: the sysupdate transfer files and node configs were not written)")


@sysext.command("compare")
@click.option("-m", "--matrix", "matrix_path", type=click.Path(path_type=Path), default=DEFAULT_MATRIX,
              show_default=True, help="The build matrix.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
def compare_command(matrix_path: Path, output_format: str) -> None:
    """Images built and stored, and storage, when baking everything versus using sysexts."""
    print_comparison(plan(load_matrix(matrix_path)), output_format)


def print_comparison(cells: list[Cell], output_format: str = "table") -> None:
    """The `plan --compare` output for the whole matrix."""
    report = sx.compare_strategies(cells)
    if output_format == "json":
        click.echo(json.dumps(sx.comparison_json(report), indent=2))
    else:
        click.echo(sx.format_comparison(report), nl=False)


def upload_s3(result: sx.SysextResult, output_dir: Path, bucket: str, prefix: str) -> list[str]:
    """Upload the image and companions, then SHA256SUMS merged with the bucket's (other minors stay)."""
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
            if path.name == "SHA256SUMS":
                continue
            key = prefix + path.name
            client.upload_file(str(path), bucket, key)
            uploaded.append(key)
        merged = merge_sha256sums(_s3_text(client, bucket, sums_key), (output_dir / "SHA256SUMS").read_text())
        client.put_object(Bucket=bucket, Key=sums_key, Body=merged.encode(), ContentType="text/plain")
        uploaded.append(sums_key)
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
