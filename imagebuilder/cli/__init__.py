"""The `imagebuilder` command: a thin layer over config -> plan -> render -> build -> publish -> retain.

One module per verb (``plan``, ``render``, ``validate``, ``build``, ``vars``, ``versions``, ``publish``,
``images``, ``prune``, ``sysext``); the options several verbs take are defined once in ``options``.
No module here names a cloud: what differs per cloud is asked of its image store.
"""

from __future__ import annotations

import sys

import click

from imagebuilder import __version__, procs
from imagebuilder.cli import build, images, plan, prune, publish, render, sysext, targets, validate, versions
from imagebuilder.cli import vars as cell_vars
from imagebuilder.clouds import check_clouds
from imagebuilder.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imagebuilder")
def cli() -> None:
    """Build, publish and retire Kubernetes node images from one matrix."""


# The package's names stay its modules (imagebuilder.cli.prune is the module, its command is .prune).
for _verb in (plan.plan_command, render.render_command, validate.validate_command, build.build_command,
              cell_vars.vars_command, versions.versions_group, sysext.sysext, images.images, prune.prune,
              publish.publish, targets.targets_command):
    cli.add_command(_verb)


def main() -> None:
    procs.interrupt_on_signals()
    try:
        check_clouds()
        cli.main(standalone_mode=False)
    except UserError as error:
        click.echo(f"imagebuilder: {error}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("imagebuilder: aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("imagebuilder: interrupted", err=True)
        sys.exit(130)
