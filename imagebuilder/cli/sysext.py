"""`imagebuilder sysext ...`: build Kubernetes systemd-sysext images, and compare strategies.

``plan --compare`` calls ``print_comparison``; the S3 upload (its options and its SDK) is ``sysext_s3``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from imagebuilder import sysext as sx
from imagebuilder import sysext_s3
from imagebuilder import sysext_signing as signing
from imagebuilder.cli.options import format_option, k8s_option, matrix_option, output_dir_option
from imagebuilder.config import load_matrix
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell, plan

DEFAULT_OUTPUT = Path("build") / "sysext"


@click.group("sysext")
def sysext() -> None:
    """Kubernetes as a systemd-sysext image, for stock OS images (Flatcar, systemd 249+)."""


@sysext.command("build")
@matrix_option(help="The matrix: its versions file and mirrors are used.")
@k8s_option(default=None,
            help="Kubernetes minor, e.g. 1.31: its pinned patch is built (1.31.4 also accepted if pinned). "
                 "Default: every (minor, arch) of the matrix's cells with strategy sysext.")
@click.option("--arch", default=None, metavar="x86-64|arm64",
              help="Architecture (amd64 also accepted); default x86-64 with --k8s.")
@output_dir_option(default=DEFAULT_OUTPUT, help="Directory the image and its companions are written to.")
@click.option("--base-url", default=None, metavar="URL",
              help="Where the output directory will be served; needed for the sysupdate file and node configs.")
@click.option("--os-id", default=sx.ANY_OS, show_default=True, help="ID= of the release file; _any matches every OS.")
@click.option("--sysext-level", default=None, help="SYSEXT_LEVEL= of the release file (with --os-id).")
@click.option("--no-updates", is_flag=True, help="Node configs without the sysupdate transfer file and timer.")
@click.option("--signing-key", default=None, metavar="KEYID",
              help="GnuPG secret key (fingerprint) that signs SHA256SUMS into SHA256SUMS.gpg: from your keyring "
                   f"($GNUPGHOME), or picks one of --signing-key-file / ${signing.SIGNING_KEY_ENV}.")
@click.option("--signing-key-file", default=None, type=click.Path(path_type=Path), metavar="PATH",
              help=f"An armored secret key to sign with (or its text in ${signing.SIGNING_KEY_ENV}); "
                   f"a passphrase, if any, in ${signing.PASSPHRASE_ENV}.")
@click.option("--insecure", is_flag=True,
              help="Allow an http:// --base-url and, without a signing key, unverified updates (Verify=no).")
@sysext_s3.upload_options
def build_command(matrix_path: Path, minor: str | None, arch: str | None, output_dir: Path, base_url: str | None,
                  os_id: str, sysext_level: str | None, no_updates: bool, signing_key: str | None,
                  signing_key_file: Path | None, insecure: bool, s3_bucket: str | None, s3_prefix: str) -> None:
    """Build kubernetes-vX.Y.Z-ARCH.raw from the pinned, checksum-verified release files."""
    with signing.signer_from(signing_key, signing_key_file) as signer:
        build_targets(matrix_path, minor, arch, output_dir, base_url, os_id, sysext_level, no_updates, insecure,
                      signer, s3_bucket, s3_prefix)


def build_targets(matrix_path: Path, minor: str | None, arch: str | None, output_dir: Path, base_url: str | None,
                  os_id: str, sysext_level: str | None, no_updates: bool, insecure: bool,
                  signer: signing.Signer | None, s3_bucket: str | None, s3_prefix: str) -> None:
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
            public_keyring=signer.public_keyring if signer else None, insecure=insecure,
        )
        started = time.monotonic()
        result = sx.build(request, loaded.versions, output_dir, signer=signer)
        elapsed = time.monotonic() - started
        click.echo(f"{result.image}  {result.size} bytes  sha256 {result.sha256}  ({elapsed:.1f}s)")
        for path in result.files[1:]:
            click.echo(f"  {path}")
        catalogued = sx.publish_local(result, signer=signer)
        click.echo(f"  catalogued in {catalogued[-1].parent}")
        if s3_bucket:
            for key in sysext_s3.upload(result, output_dir, s3_bucket, s3_prefix, signer):
                click.echo(f"  s3://{s3_bucket}/{key}")
    if base_url is None:
        click.echo("(no --base-url: the sysupdate transfer files and node configs were not written)")


@sysext.command("verify")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--keyring", required=True, type=click.Path(path_type=Path), metavar="PUB",
              help=f"Binary public keyring, as nodes have it in {signing.NODE_KEYRING} (gpg --export KEYID > PUB).")
def verify_command(directory: Path, keyring: Path) -> None:
    """Check DIRECTORY as systemd-sysupdate would before updating: SHA256SUMS.gpg, then every image's sum.

    Exits 1, with one line saying what does not match, when a node would refuse the update."""
    checked = signing.verify_directory(directory, keyring)
    click.echo(f"{directory}: SHA256SUMS.gpg verifies against {keyring}; {len(checked)} files match SHA256SUMS")


@sysext.command("compare")
@matrix_option()
@format_option(default="table", show_default=True)
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
