"""The one CLI (`dynamic-atss`, `python -m dynamic_atss`): every command a message tells a user to run exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from dynamic_atss.__main__ import COMMANDS, main as cli
from dynamic_atss.cli.benchmark import SUBCOMMANDS


PACKAGE = Path(__file__).resolve().parents[1] / "dynamic_atss"
# A command as messages and docs write it: `dynamic-atss X ...`, `python -m dynamic_atss X`, `accelerate launch -m
# dynamic_atss X`; an upper-case word (`dynamic-atss COMMAND`) is a placeholder.
COMMAND = re.compile(r"(?:`dynamic-atss|-m dynamic_atss) ([a-z]\w*)(?: ([a-z]\w*))?")
# Files that are not installed (a message naming them fails for everyone who pip-installed the package).
NOT_INSTALLED = re.compile(r"hub/convert_mmdet\.py|hub/push\.py|(?:launch|python) train\.py|benchmarks/\w+\.py")


def _messages(package: Path = PACKAGE) -> list[tuple[str, str]]:
    """(file:line, text) of every string literal in the package that is not a docstring (f-string parts too)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
                      and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found.append((f"{path.relative_to(package.parent)}:{node.lineno}", node.value))
    return found


def _texts(package: Path = PACKAGE) -> list[tuple[str, str]]:
    """Messages and docstrings: every command either names must exist."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        found += [(f"{path.relative_to(package.parent)}:{node.lineno}", node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    return found


def named_commands(texts: list[tuple[str, str]]) -> list[tuple[str, str, str | None]]:
    return [(where, match.group(1), match.group(2)) for where, text in texts for match in COMMAND.finditer(text)]


def test_every_command_named_in_the_package_is_installed():
    named = named_commands(_texts())
    assert {command for _, command, _ in named} >= {"convert", "push", "train", "benchmark"}  # the scan sees them
    missing = [(where, command) for where, command, _ in named
               if command not in COMMANDS and command != "train" or command == "train" and "train" not in COMMANDS]
    assert missing == []
    benchmarks = [(where, sub) for where, command, sub in named if command == "benchmark" and sub]
    assert [(where, sub) for where, sub in benchmarks if sub not in SUBCOMMANDS] == []


def test_no_message_names_a_file_that_is_not_installed():
    assert [(where, text) for where, text in _messages() if NOT_INSTALLED.search(text)] == []


def test_the_scan_finds_a_missing_command(tmp_path):
    (tmp_path / "m.py").write_text('def f():\n    raise ValueError("run `dynamic-atss frobnicate X` or python hub/push.py")\n')
    assert [c for _, c, _ in named_commands(_texts(tmp_path))] == ["frobnicate"]
    assert len([t for _, t in _messages(tmp_path) if NOT_INSTALLED.search(t)]) == 1


@pytest.mark.parametrize("command", ["convert", "push", "benchmark"])
def test_commands_answer_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli([command, "assigner", "--help"] if command == "benchmark" else [command, "--help"])
    assert exit_info.value.code == 0
    assert f"dynamic-atss {command}" in capsys.readouterr().out


def test_cli_help_and_unknown_command(capsys):
    assert cli(["--help"]) == 0
    assert "predict" in capsys.readouterr().out
    assert cli(["bogus"]) == 2
