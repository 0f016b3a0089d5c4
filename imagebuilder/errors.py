"""Errors a user can act on: the CLI prints their one line and exits 2, never a traceback."""


class UserError(Exception):
    """Something wrong with the input or the environment, phrased as one line with its fix."""

    exit_code = 2
