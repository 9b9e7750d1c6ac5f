"""The `dynamic-atss` commands: one module per command (`cli/<command>.py`, each `main(argv) -> int`).

Shared here, so every command speaks alike:

* `CommandParser`: usage lines read `dynamic-atss CMD`; flags are snake_case (as `accelerate` and the Hugging
  Face scripts spell them) and the kebab-case spelling of each is accepted too (`--batch-size` = `--batch_size`),
  as are the older names listed in `aliases` (hidden from `--help`); every option's help shows its default.
* `run_command`: the one error rule. A `UserInputError` (a path, a name, a tag, a device, a number out of
  range, ...) or a full / read-only disk becomes `dynamic-atss CMD: error: MESSAGE` on stderr and exit status 2;
  any other exception is a bug in this package: its traceback, then one line asking to report it, and exit
  status 1.

This module imports neither torch nor the package's heavy modules: `dynamic-atss CMD --help` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from collections.abc import Callable, Sequence

from ..errors import UserInputError

__all__ = ["CommandParser", "run_command", "positive_int", "score_threshold", "check_device"]

PROGRAM = "dynamic-atss"
# A full disk, a quota or a read-only file system: the user's environment, not a bug (one line, exit status 2).
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends `(default: X)` to options whose default means something
    (not None / False) and whose help does not say its default already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        default = action.default
        if (default not in (None, False, argparse.SUPPRESS) and "default" not in help_ and action.option_strings
                and not isinstance(action, argparse._StoreConstAction)):
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
            help_ += f" (default: {shown})"
        return help_


class CommandParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` for `dynamic-atss COMMAND`: snake_case flags, kebab-case and old names accepted.

    `aliases` maps a hidden old flag to its current name, e.g. `{"--allow_random_weights": "--random_weights"}`,
    or to a whole current option (`{"--cpu": "--device=cpu"}`).
    """

    def __init__(self, command: str, description: str | None = None, epilog: str | None = None,
                 aliases: dict[str, str] | None = None) -> None:
        super().__init__(prog=f"{PROGRAM} {command}", description=description, epilog=epilog,
                         formatter_class=_HelpFormatter, allow_abbrev=False)
        self.aliases = dict(aliases or {})

    def normalize(self, argv: Sequence[str]) -> list[str]:
        """`--batch-size 2` / `--batch-size=2` -> `--batch_size 2`; an old name -> its current one. Tokens after
        `--` and values are left alone; unknown flags are left for argparse (or the command) to report."""
        known = set(self._option_string_actions)
        out: list[str] = []
        rest = list(argv)
        while rest:
            token = rest.pop(0)
            if token == "--":
                out += [token, *rest]
                break
            if token.startswith("--") and len(token) > 2:
                flag, eq, value = token.partition("=")
                if flag not in known:
                    snake = "--" + flag[2:].replace("-", "_")
                    flag = snake if snake in known else flag
                    flag = self.aliases.get(flag, self.aliases.get(snake, flag))
                token = flag if "=" in flag and not eq else flag + eq + value
            out.append(token)
        return out

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):  # type: ignore[override]
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args(self.normalize(args), namespace)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def score_threshold(text: str) -> float:
    """argparse type: a score threshold in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"scores are in [0, 1]; got {value}")
    return value


def check_device(device: str, flag: str = "--device") -> str:
    """`auto` -> cuda when available, else cpu; a device this machine lacks -> `UserInputError` naming it."""
    import torch  # noqa: PLC0415  (after argument parsing: `--help` never imports torch)

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise UserInputError(f"{flag} {device}: not a device name ({error}); use cpu, cuda, cuda:N or auto") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"{flag} {device}: this machine has no usable CUDA GPU (torch.cuda.is_available() "
                                 "is False); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserInputError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                                 "use cuda:0 ... or cpu")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError(f"{flag} {device}: MPS is not available here; use --device cpu")
    return device


def run_command(command: str, main: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Run `main(argv)` under the one error rule (see the module docstring); returns the exit status."""
    prog = f"{PROGRAM} {command}"
    try:
        return main(list(argv)) or 0
    except UserInputError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in _FULL_OR_READ_ONLY:
            return _report_bug(prog)
        where = f" writing {error.filename}" if error.filename else ""
        print(f"{prog}: error: {error.strerror or error}{where}; free some space or write elsewhere (--out)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001  (the edge: anything else is a bug of this package)
        return _report_bug(prog)


def _report_bug(prog: str) -> int:
    """The traceback of the exception being handled, then one line asking to report it; exit status 1."""
    traceback.print_exc()
    print(f"{prog}: internal error: this is a bug in dynamic-atss, not a mistake in your input; please report it to "
          "the dynamic-atss maintainers with the command line and the traceback above", file=sys.stderr)
    return 1


def load_model_arg(spec: str, random_weights: bool = False, flag: str = "--model"):
    """The model a command's `--model` names, with weights (`dynamic_atss.load_model`); a registered name without
    published weights is refused (saying which exist) unless `random_weights`. Every way the name can be wrong (a
    missing folder or file, a broken or newer model folder, a Hub repo or revision that does not exist, weights
    that cannot be downloaded) is a `UserInputError` that names `flag` and `spec`. Returns the model in eval mode."""
    import warnings  # noqa: PLC0415

    from ..factory import create, load_model  # noqa: PLC0415
    from ..registry import NoPretrainedWeightsError  # noqa: PLC0415

    # Every loading error of the package (a broken or newer folder, a Hub repo, a download) is a UserInputError;
    # a plain OS error reading the named path is the user's too.
    wrong_path = (FileNotFoundError, NotADirectoryError)
    try:
        try:
            model = load_model(spec)
        except NoPretrainedWeightsError as error:
            if not random_weights:
                raise UserInputError(f"{flag} {spec}: {error}\n(--random_weights runs random weights anyway, to "
                                     "test the pipeline)") from None
            warnings.warn(f"{str(error).splitlines()[0]} -- running random weights (--random_weights)", UserWarning,
                          stacklevel=2)
            model = create(spec, pretrained=False)
    except UserInputError as error:
        if str(error).startswith(flag):
            raise
        raise UserInputError(f"{flag} {spec}: {error}") from None
    except wrong_path as error:
        raise UserInputError(f"{flag} {spec}: {error}") from None
    return model.eval()
