"""The one error rule (`dynamic_atss.errors.UserInputError` at the command edge, `dynamic_atss.cli.run_command`): a
user's mistake is one line on stderr and exit status 2; a bug keeps its traceback and asks to be reported."""

from __future__ import annotations

from dynamic_atss.cli import run_command
from dynamic_atss.errors import UserInputError


class BadFileError(UserInputError, FileNotFoundError):
    pass


def main(argv):
    if argv == ["bad"]:
        raise BadFileError("data/x.json does not exist; pass --data DIR")
    if argv == ["bug"]:
        raise KeyError("internal")
    return 0


def test_a_user_error_is_one_line_and_exit_status_2(capsys):
    assert run_command("train", main, ["bad"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "dynamic-atss train: error: data/x.json does not exist; pass --data DIR\n"
    assert captured.out == ""


def test_success_passes_through_and_a_bug_keeps_its_traceback_and_asks_for_a_report(capsys):
    assert run_command("train", main, []) == 0
    assert run_command("predict", main, ["bug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'internal'" in err
    assert err.rstrip().splitlines()[-1].startswith("dynamic-atss predict: internal error: this is a bug in dynamic-atss")
    assert "please report it" in err


def test_a_full_disk_is_one_line_and_other_os_errors_are_bugs(capsys):
    import errno

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "out/a.png")

    def other(argv):
        raise OSError(errno.EBADF, "Bad file descriptor")

    assert run_command("predict", full, []) == 2
    assert capsys.readouterr().err == ("dynamic-atss predict: error: No space left on device writing out/a.png; free "
                                       "some space or write elsewhere (--out)\n")
    assert run_command("predict", other, []) == 1 and "internal error" in capsys.readouterr().err
