"""Tests of dynamic_atss.errors: a user's mistake is one line on stderr and exit status 2; a bug keeps its traceback."""

from __future__ import annotations

import pytest

from dynamic_atss.errors import UserInputError, exits_2_on_user_error


class BadFileError(UserInputError, FileNotFoundError):
    pass


@exits_2_on_user_error("tool")
def main(argv, prog=None):
    if argv == ["bad"]:
        raise BadFileError("data/x.json does not exist; pass --data DIR")
    if argv == ["bug"]:
        raise KeyError("internal")
    return 0


def test_a_user_error_is_one_line_and_exit_status_2(capsys):
    assert main(["bad"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "tool: error: data/x.json does not exist; pass --data DIR\n" and captured.out == ""
    assert main(["bad"], prog="dynamic-atss train") == 2
    assert capsys.readouterr().err.startswith("dynamic-atss train: error: data/x.json")


def test_success_passes_through_and_other_errors_keep_their_traceback():
    assert main([]) == 0 and main.__name__ == "main"
    with pytest.raises(KeyError, match="internal"):
        main(["bug"])
