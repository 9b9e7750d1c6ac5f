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


# ------------------------------------------------------------------------------ issue 25: one convention, basics
def test_bare_version_and_a_misspelt_command():
    from helpers_cli import run_installed

    bare = run_installed()
    assert bare.returncode == 2 and "usage: dynamic-atss COMMAND" in bare.stderr and "predict" in bare.stderr
    version = run_installed("--version")
    from dynamic_atss import __version__

    assert version.returncode == 0 and version.stdout.strip() == f"dynamic-atss {__version__}"
    typo = run_installed("trian")
    assert typo.returncode == 2 and "did you mean 'train'?" in typo.stderr and "Traceback" not in typo.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_usage_line_reads_dynamic_atss_command_and_every_option_has_help(command, capsys):
    argv = [command, "speed", "--help"] if command == "benchmark" else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith(f"usage: dynamic-atss {command}")
    from dynamic_atss.cli import CommandParser

    module = __import__(COMMANDS[command][0], fromlist=["x"])
    builders = [getattr(module, name) for name in ("build_parser", "coco_parser", "speed_parser", "assigner_parser")
                if hasattr(module, name)]
    for build in builders:
        parser = build()
        assert isinstance(parser, CommandParser)
        for action in parser._actions:
            assert action.help, (command, action.option_strings)
            for flag in action.option_strings:  # snake_case; the kebab-case spelling is accepted as well
                assert "-" not in flag.lstrip("-"), (command, flag)


def test_kebab_case_and_old_names_are_aliases():
    from dynamic_atss.cli import CommandParser

    parser = CommandParser("x", aliases={"--allow_random_weights": "--random_weights", "--cpu": "--device=cpu"})
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--random_weights", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(["--batch-size=3", "--allow-random-weights", "--cpu"])
    assert (args.batch_size, args.random_weights, args.device) == (3, True, "cpu")


def test_running_a_benchmark_module_directly_is_no_traceback():
    """`python -m dynamic_atss.benchmark.coco` / `.throughput` were tracebacks: the command is `dynamic-atss
    benchmark`; the modules have no entry point of their own."""
    import sys

    from helpers_cli import run_installed

    for module in ("dynamic_atss.benchmark.coco", "dynamic_atss.benchmark.throughput"):
        result = run_installed("-m", module, executable=[sys.executable])
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["--version"], [], ["train", "--help"], ["predict", "--help"],
                                  ["benchmark", "speed", "--help"], ["export", "--help"], ["convert", "--help"],
                                  ["push", "--help"], ["demo", "--help"]])
def test_help_and_version_answer_without_importing_torch(argv):
    """`dynamic-atss --help` took 5.3 s because it imported torch (about 3 s alone)."""
    from helpers_cli import run_installed

    result = run_installed(*argv, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == (2 if not argv else 0), result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "dynamic_atss" in imported  # the profile is on
    assert not {name for name in imported if name.split(".")[0] in ("torch", "torchvision", "accelerate", "timm")}
