"""The options several verbs take, each defined once here.

Each is a ``SharedOption`` carrying the name of its definition (``shared``): its flags, destination and
type live here alone; a verb may only word its help and default for what it does with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from imagebuilder.clouds import cloud_aliases, store_clouds, unmanaged_clouds
from imagebuilder.config import DEFAULT_MATRIX

F = TypeVar("F", bound=Callable[..., Any])


class SharedOption(click.Option):
    """An option defined in this module; ``shared`` names its definition."""

    def __init__(self, *args: Any, shared: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shared = shared


class LazyHelpOption(click.Option):
    """An option whose help is worded when it is shown (it asks the cloud stores, whose SDKs load only then)."""

    def __init__(self, *args: Any, help_text: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_text = help_text

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self.help_text()
        return super().get_help_record(ctx)


def _shared(name: str, *declarations: str, **defaults: Any) -> Callable[..., Callable[[F], F]]:
    """The decorator factory of one shared option: flags and type fixed, help and default per verb."""

    def option(**per_verb: Any) -> Callable[[F], F]:
        attributes = {**defaults, **per_verb}
        return click.option(*declarations, cls=attributes.pop("cls", SharedOption), shared=name, **attributes)

    option.__name__ = f"{name}_option"
    return option


_matrix = _shared("matrix", "-m", "--matrix", "matrix_path", type=click.Path(path_type=Path),
                  default=DEFAULT_MATRIX, show_default=True, help="The build matrix.")


def matrix_option(help: str = "The build matrix.") -> Callable[[F], F]:  # noqa: A002 - click's own word
    """The matrix the verb reads; it must exist."""
    return _matrix(help=help)


def optional_matrix_option(what: str) -> Callable[[F], F]:
    """A matrix the verb reads when there is one (images, prune): without -m, the default file if it exists."""
    return _matrix(default=None, show_default=False, help=f"{what} [default: {DEFAULT_MATRIX} if it exists].")


only_option = _shared(
    "only", "--only", "only", multiple=True, metavar="GLOB",
    help="Only cells whose id matches this glob (repeatable), e.g. '*-debian-12-*'.")

output_dir_option = _shared(
    "output_dir", "-o", "--output", "output_dir", type=click.Path(path_type=Path), default=Path("build"),
    show_default=True, help="Where each cell's Packer directory is written.")

TABLE_OR_JSON = ("table", "json")

output_format_option = _shared("output_format", "--output", "output_format", type=click.Choice(TABLE_OR_JSON),
                               default=None)


def format_option(choices: tuple[str, ...] = TABLE_OR_JSON, **per_verb: Any) -> Callable[[F], F]:
    """How the verb prints its result, for the verbs whose --output names a directory (plan, sysext compare)."""
    return _shared("format", "--format", "output_format", type=click.Choice(choices), default=None)(**per_verb)


offline_option = _shared(
    "offline", "--offline", is_flag=True,
    help="Plan from the base image references alone: ask no cloud or vendor site which image they name "
         "today (the build keys then differ from resolved ones).")

strict_option = _shared(
    "strict", "--strict", is_flag=True,
    help="A cloud that cannot be reached (no SDK, no credentials, no answer) is an error, not a warning.")

dry_run_option = _shared("dry_run", "--dry-run", is_flag=True)

packer_version_option = _shared(
    "packer_version", "--packer-version", default=None, metavar="X.Y.Z",
    help="Emit templates for this Packer version; default: the one on PATH.")

# The unmanaged clouds are choices too, so that naming one says why in one line (clouds.canonical_cloud).
cloud_option = _shared("cloud", "--cloud",
                       type=click.Choice([*store_clouds(), *cloud_aliases(), *unmanaged_clouds()]))

k8s_option = _shared("k8s", "--k8s", "minor", metavar="MINOR")

os_option = _shared("os", "--os", "os_id", metavar="OS")


def rendering_options(command: F) -> F:
    """The options of the verbs that render cells (render, validate), in their --help order."""
    for option in reversed((matrix_option(), only_option(), output_dir_option(), packer_version_option(),
                            offline_option(), strict_option())):
        command = option(command)
    return command
