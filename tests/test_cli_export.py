"""Tests of dynamic_atss.inference.cli."""

import pytest

from dynamic_atss.__main__ import main as cli


@pytest.mark.parametrize("args, message", [
    (["--opset", "5"], r"--opset 5 is not supported: choose one of \[18, 19, 20, 21, 22, 23\]"),
    (["--model", "r5O"], r"unknown model 'r5O'"),
    (["--out", "{tmp}"], r"is an existing folder; give a file name"),
    (["--out", "{tmp}/a_file/model.onnx"], r"cannot write below .*a_file \(not a writable folder\)"),
])
def test_export_mistakes_are_one_line_and_exit_2(tmp_path, saved_tiny_model, capsys, args, message):
    """Issue 18, items 8 and 17: refused before the model is loaded or anything is written."""
    import re

    (tmp_path / "a_file").write_text("")
    options = {"--model": str(saved_tiny_model), "--out": str(tmp_path / "model.onnx")}
    options.update(dict(zip(args[::2], [a.format(tmp=tmp_path) for a in args[1::2]])))
    argv = ["export", "--allow-random-weights"] + [item for pair in options.items() for item in pair]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "model.onnx").exists()


def test_export_rows_of_issue_25(tmp_path):
    """`export --model ./nope` was a traceback; `--format torch-export --out m.onnx` wrote a .pt2 under .onnx."""
    from helpers_cli import one_line_error, run_installed

    one_line_error(run_installed("export", "--model", "./nope", "--out", str(tmp_path / "m.onnx")), "export",
                   "--model ./nope")
    result = run_installed("export", "--model", "r50", "--random_weights", "--format", "torch-export", "--out",
                           str(tmp_path / "m.onnx"))
    one_line_error(result, "export", "--format torch-export writes a .pt2 file")
    assert not (tmp_path / "m.onnx").exists()


def test_a_dcn_model_at_an_old_opset_is_a_user_error():
    from dynamic_atss.errors import UserInputError
    from dynamic_atss.inference.export import OpsetTooOldError

    assert issubclass(OpsetTooOldError, UserInputError)


def test_a_dcn_model_at_opset_18_is_one_line_with_status_2(tmp_path):
    """It was one line, but exit status 1."""
    pytest.importorskip("onnxscript")
    from helpers_cli import one_line_error, run_installed

    result = run_installed("export", "--model", "dynamic_atss_r50_dcn", "--random_weights", "--opset", "18", "--out",
                           str(tmp_path / "m.onnx"))
    one_line_error(result, "export", "opset 19")
    assert not (tmp_path / "m.onnx").exists()
