"""The one rule for a user's mistake on the command line: exit status 2 and one message, no traceback.

Errors caused by the user's input (a config value, a file, a model name, an output path) derive from
`UserInputError` as well as from the builtin class callers already catch (`ValueError`, `FileNotFoundError`,
...). Every command runs under `dynamic_atss.cli.run_command`, which prints such an error as
`dynamic-atss COMMAND: error: MESSAGE` on stderr and returns 2; any other exception is a bug of this package: its
traceback, then a line asking to report it.
"""

from __future__ import annotations

__all__ = ["UserInputError"]


class UserInputError(Exception):
    """A mistake in the user's input; the message names the item at fault and the fix."""
