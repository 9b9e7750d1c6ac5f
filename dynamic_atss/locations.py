"""Where saved weights are, from the name a user gives: `hf-hub:org/name[@revision]`, `local-dir:PATH`, or the path of
an existing folder. Imports nothing of the package (the registry holds the names, the hub loads the folders)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UserInputError

__all__ = ["LocationError", "is_model_folder", "is_repo_id", "parse_location"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class LocationError(UserInputError, ValueError):
    """A malformed `hf-hub:` location; names it and the expected form."""


def is_model_folder(name: str | os.PathLike) -> bool:
    """Whether `name` is an existing folder (the way `create()` tells a folder from a registered name)."""
    return Path(os.fspath(name)).expanduser().is_dir()


def parse_location(name: str | os.PathLike) -> tuple[str, str, str | None] | None:
    """Where saved weights are: 'hf-hub:org/name[@rev]' -> ("hub", "org/name", rev); 'local-dir:PATH' or an existing
    folder -> ("dir", PATH, None); anything else (a model name, a missing path) -> None."""
    name = os.fspath(name)
    if name.startswith("hf-hub:"):
        repo, _, revision = name[len("hf-hub:"):].partition("@")
        if not _REPO_ID.match(repo):
            raise LocationError(f"{name!r}: expected 'hf-hub:org/name' or 'hf-hub:org/name@revision'")
        return "hub", repo, revision or None
    if name.startswith("local-dir:"):
        return "dir", name[len("local-dir:"):], None
    if is_model_folder(name):
        return "dir", name, None
    return None


def is_repo_id(name: str) -> bool:
    """'org/name' (what the Hub accepts as a repo id; not a relative or absolute path)."""
    return bool(_REPO_ID.match(name)) and not name.startswith((".", "/", "~"))
