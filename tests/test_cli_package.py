"""The CLI package: no module of it names a cloud, and the options every verb shares have one definition.

What differs per cloud is asked of the cloud's image store (``imagebuilder.clouds.ImageStore``), so
adding a cloud never touches ``imagebuilder/cli/``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from imagebuilder.cli import cli
from imagebuilder.cli.options import SharedOption
from imagebuilder.clouds import registry, store_clouds
from imagebuilder.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CLI_PACKAGE = REPO / "imagebuilder" / "cli"
CLOUDS_PACKAGE = REPO / "imagebuilder" / "clouds"
# Every cloud the project knows (the local catalogue is the CLI's default store, not a cloud).
CLOUD_NAMES = frozenset({*store_clouds(), *registry.aliases(), *registry.names()}) - {"local"}
# The clouds' SDKs (the pyproject extras): a CLI module importing one works on a cloud itself.
SDK_PACKAGES = frozenset({"boto3", "botocore", "google", "googleapiclient", "azure", "msrest", "openstack",
                          "keystoneauth1", "glanceclient"})
# A flag several verbs take must come from imagebuilder.cli.options.
SHARED_FLAGS = frozenset({"--matrix", "--only", "--output", "--format", "--strict", "--offline", "--dry-run",
                          "--packer-version", "--cloud", "--k8s", "--os"})


FILE_SUFFIX = re.compile(r"\.(raw|ova|ovf|vmdk)\b")


def _words(text: str) -> list[str]:
    """The words of a string or an identifier: snake_case, CamelCase, kebab-case and prose all split."""
    return [word.lower() for word in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", text)]


def _cloud_module_names() -> frozenset[str]:
    """The cloud modules (or, once moved, folders) under imagebuilder/clouds/."""
    return frozenset(path.stem for path in CLOUDS_PACKAGE.iterdir()
                     if path.name != "__init__.py" and (path.suffix == ".py" or (path / "__init__.py").exists()))


def cloud_mentions(source: str) -> list[str]:
    """Where a module names a cloud: in an import, an identifier, or a string (help texts and docstrings too)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        imported: list[str] = []
        if isinstance(node, ast.Import):
            imported = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for module in imported:
            parts = module.split(".")
            if parts[0] in SDK_PACKAGES or parts[:2] == ["imagebuilder", "clouds"] and len(parts) > 2 and \
                    parts[2] in _cloud_module_names():
                found.append(f"line {node.lineno}: imports {module}")
        texts: list[str] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            texts = [node.value]
        elif isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            texts = [node.name]
        for text in texts:
            # A file name's suffix is a format, not the cloud of that name (sysext's "<name>.raw").
            text = FILE_SUFFIX.sub("", text)
            named = CLOUD_NAMES.intersection(_words(text)) | {
                cloud for cloud in CLOUD_NAMES if re.search(rf"(?<![a-z]){cloud}(?![a-z])", text.lower())}
            if named:
                found.append(f"line {getattr(node, 'lineno', '?')}: names {', '.join(sorted(named))} in {text!r}")
    return found


def cli_modules() -> list[Path]:
    return sorted(CLI_PACKAGE.rglob("*.py"))


def test_no_cli_module_names_a_cloud() -> None:
    modules = cli_modules()
    assert {path.stem for path in modules} >= {"__init__", "__main__", "options", "plan", "render", "validate",
                                              "build", "vars", "versions", "publish", "images", "prune", "sysext"}
    mentions = {str(path.relative_to(REPO)): hits for path in modules if (hits := cloud_mentions(path.read_text()))}
    assert mentions == {}


def test_the_check_finds_a_cloud_however_it_is_named() -> None:
    """The check above is only as good as this: each way a CLI module used to name a cloud is found."""
    samples = {
        "from imagebuilder.clouds.aws import AwsImageStore": 2,  # the module and the class
        "import boto3": 1,
        "def f(names):\n    return 'aws' in names": 1,
        "HELP = 'Only cells whose id matches this glob, e.g. qemu-debian-12-*'": 1,
        "ERROR = \"--region: only AWS images | fix: pip install 'imagebuilder[aws]'\"": 1,
        "ENV = 'AWS_ENDPOINT_URL'": 1,
        "x = settings['gcp']": 1,
        "class AzureThing: pass": 1,
        "import openstack.connection": 1,
        '"""List images (OpenStack, the local catalogue)."""': 1,
    }
    for source, expected in samples.items():
        assert len(cloud_mentions(source)) >= expected, source
    assert cloud_mentions("from imagebuilder.clouds import ImageStore, store_for\nHELP = 'the draws and laws'") == []
    assert cloud_mentions("HELP = 'writes kubernetes-v1.31.4-x86-64.raw'") == []
    assert len(cloud_mentions("HELP = 'a raw disk'")) == 1


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def test_every_shared_option_has_one_definition() -> None:
    verbs = dict(leaf_commands(cli))
    assert {"plan", "render", "validate", "build", "vars", "publish", "prune", "images list", "images resolve",
            "versions update", "sysext build", "sysext compare"} <= set(verbs)
    definitions: dict[str, set[tuple[tuple[str, ...], str | None, type, bool]]] = {}
    users: dict[str, list[str]] = {}
    for verb, command in verbs.items():
        for param in command.params:
            if not isinstance(param, click.Option) or not SHARED_FLAGS.intersection(param.opts):
                continue
            assert isinstance(param, SharedOption), f"{verb} {'/'.join(param.opts)}: not from imagebuilder.cli.options"
            definitions.setdefault(param.shared, set()).add(
                (tuple(param.opts), param.name, type(param.type), param.is_flag))
            users.setdefault(param.shared, []).append(verb)
    # One definition: each shared option has the same flags, destination and type wherever it is used.
    assert {name: len(signatures) for name, signatures in definitions.items()} == {name: 1 for name in definitions}
    assert set(users) == {"matrix", "only", "output_dir", "output_format", "format", "offline", "strict", "dry_run",
                          "packer_version", "cloud", "k8s", "os"}
    assert all(len(verbs_using) >= 2 for verbs_using in users.values()), users
    # every verb reads a matrix, but `sysext verify`, which checks a directory as a node would
    assert sorted(users["matrix"]) == sorted(set(verbs) - {"sysext verify"})
    assert {"plan", "render", "validate", "build", "publish"} <= set(users["only"])


def test_region_words_come_from_the_store_that_is_pruned_by_region(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """prune --region's help and its error line are worded from the stores, as before the move
    (test_retention_failclosed checks the exit status 2 of the error through the entry point)."""
    runner = CliRunner()
    shown = runner.invoke(cli, ["prune", "--help"], terminal_width=400)
    assert "AWS regions to prune (repeatable), instead of clouds.aws.regions of the matrix." in shown.output
    monkeypatch.chdir(tmp_path)  # no matrix.yaml here
    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    refused = runner.invoke(cli, ["prune", "--cloud", "local", "--region", "eu-west-1"])
    assert isinstance(refused.exception, UserError)
    assert str(refused.exception) == ("--region: only AWS images are pruned by region "
                                      "| fix: add --cloud aws, or drop --region")
