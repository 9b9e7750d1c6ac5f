"""The one rule for a user's mistake on the command line: exit status 2 and one message, no traceback.

Errors caused by the user's input (a config value, a file, a model name, an output path) derive from
`UserInputError` as well as from the builtin class callers already catch (`ValueError`, `FileNotFoundError`,
...). Every CLI entry point is wrapped by `exits_2_on_user_error`, which prints such an error as
`PROG: error: MESSAGE` on stderr and returns 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

__all__ = ["UserInputError", "exits_2_on_user_error"]


class UserInputError(Exception):
    """A mistake in the user's input; the message names the item at fault and the fix."""


def exits_2_on_user_error(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a CLI `main(argv) -> int`: a `UserInputError` becomes `PROG: error: MESSAGE` and exit status 2."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(*args: Any, **kwargs: Any) -> int:
            try:
                return main(*args, **kwargs)
            except UserInputError as error:
                name = kwargs.get("prog") or prog
                print(f"{name}: error: {error}", file=sys.stderr)
                return 2

        return wrapper

    return decorate
