"""Typed configuration values: one converter for the model config (`ModelConfig`) and the training config.

Every value, whether it comes from a YAML recipe, a JSON `config.json`, a `--section.key value` command-line
override or a Python keyword, is converted to the type annotated on its dataclass field:

* floats in any notation (`1e-3`; PyYAML reads an unquoted `1e-3` as a *string*), integers (`1e2` -> 100
  when integral), booleans (`true`/`false`/`yes`/`no`), `None`/`null`/`~` for optional fields;
* tuples and lists element by element (`[640, 800]` or `640,800` on the command line), dicts;
* `Literal` choices checked; unions tried in order (`None` first);
* nested dataclasses from mappings; unknown or misspelt keys rejected naming the closest field.

Types are read with `typing.get_type_hints`, so any field added later is converted without registering it
(`from __future__ import annotations` turns annotations into strings; `get_type_hints` resolves them).

Why hand-written rather than draccus / jsonargparse / tyro: the recipes name a *registry model* plus a sparse
set of dotted `ModelConfig` overrides (`model_overrides: {head.quality: iou}`) resolved against the model's
own defaults at build time, and inherit from one `base:` file relative to themselves. Those libraries map one
complete dataclass tree (draccus, tyro) or bring their own config-file semantics (jsonargparse); none checks
a sparse dotted mapping against a second dataclass, and none names the closest key. The converter below is
small, has no dependency, and keeps the recipes as they are.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import yaml

from .errors import UserInputError

__all__ = ["ConfigError", "cli_overrides", "convert", "convert_dotted", "describe_type", "field_rows", "field_types", "from_dict",
           "resolve_dotted"]

_NONE_WORDS = {"none", "null", "~", ""}
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


class ConfigError(UserInputError, ValueError):
    """A configuration value or key that does not fit the dataclass fields; the message names the key."""


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """`{field name: resolved type}` of the `__init__` fields of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def closest(name: str, options: typing.Iterable[str]) -> str:
    """' (did you mean X?)' for the closest option, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def describe_type(tp: Any) -> str:
    """A short human-readable name of a field type: `float`, `int | None`, `'sgd' | 'adamw'`, `tuple[int, ...]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(describe_type(a) for a in args)
    if origin in (tuple, list, dict):
        inner = ", ".join("..." if a is Ellipsis else describe_type(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _join(path: str, name: Any) -> str:
    return f"{path}.{name}" if path else str(name)


def _fail(path: str, tp: Any, value: Any, hint: str = "") -> typing.NoReturn:
    raise ConfigError(f"{path}: expected {describe_type(tp)}, got {value!r}{hint}")


def _yaml_bool_hint(value: Any, types_: typing.Iterable[Any]) -> str:
    """YAML 1.1 reads an unquoted no/off/yes/on as a boolean: say so when a text choice was expected."""
    texts = [a for t in types_ if typing.get_origin(t) is Literal for a in typing.get_args(t) if isinstance(a, str)]
    return " (YAML reads an unquoted yes/no/on/off as a boolean: quote the value)" if isinstance(value, bool) and texts else ""


def _parse_text(value: str, path: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: cannot parse {value!r} ({e})") from None


def convert(value: Any, tp: Any, path: str) -> Any:
    """`value` converted to type `tp`; `ConfigError` naming `path` when it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        _fail(path, tp, value)
    if origin in (Union, types.UnionType):
        members = sorted(args, key=lambda a: a is not type(None))  # `None` first: "null" is never a string
        for member in members:
            try:
                return convert(value, member, path)
            except ConfigError:
                continue
        _fail(path, tp, value, _yaml_bool_hint(value, members))
    if origin is Literal:
        for option in args:
            if value == option and type(value) is type(option):
                return option
            if isinstance(value, str) and not isinstance(option, str) and value.strip() == str(option):
                return option
        _fail(path, tp, value, _yaml_bool_hint(value, [tp]))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        _fail(path, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    number = float(value.strip())
                except ValueError:
                    _fail(path, tp, value)
        if isinstance(number, float) and math.isfinite(number) and number.is_integer():
            return int(number)  # `1e2`, `90e3`
        _fail(path, tp, value, " (an integer)" if isinstance(number, float) else "")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # `1e-3`, which PyYAML leaves as a string
            except ValueError:
                pass
        _fail(path, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        _fail(path, tp, value, " (quote the value to pass it as text)")
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str):
            parsed = _parse_text(value, path)
            value = parsed if isinstance(parsed, list) else [v.strip() for v in value.split(",")] if "," in value else parsed
        if not isinstance(value, (list, tuple)):
            _fail(path, tp, value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                _fail(path, tp, value, f" ({len(args)} values)")
            return tuple(convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [convert(v, item_type, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = _parse_text(value, path)
        if not isinstance(value, Mapping):
            _fail(path, tp, value)
        key_type, value_type = args if args else (Any, Any)
        return {convert(k, key_type, path): convert(v, value_type, _join(path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str):
            value = _parse_text(value, path)
        return from_dict(tp, value, path)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeError(f"{path}: no conversion for the field type {tp!r}")  # a programming error, not user input


def from_dict(cls: type, data: Any, path: str) -> Any:
    """Dataclass `cls` from a (nested) mapping, every value converted to its field's type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping of {cls.__name__} fields, got {data!r}")
    fields = field_types(cls)
    unknown = [str(name) for name in data if name not in fields]
    if unknown:
        hints = "".join(closest(name, fields) for name in unknown)
        raise ConfigError(
            f"{path or cls.__name__}: unknown field(s) {unknown} for {cls.__name__}{hints}; known fields: {sorted(fields)}"
        )
    kwargs = {name: convert(value, fields[name], _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ checks across fields
        raise ConfigError(f"{path or cls.__name__}: {e}") from e


def resolve_dotted(cls: type, key: str, where: str = "config") -> Any:
    """The type of the field a dotted `key` (e.g. `head.channels`) names inside dataclass `cls`."""
    tp: Any = cls
    walked = []
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"unknown {where} {key!r}: {'.'.join(walked)} is a value, not a section")
        fields = field_types(tp)
        if part not in fields:
            section = ".".join(walked) or tp.__name__
            raise ConfigError(
                f"unknown {where} {key!r}: no key {part!r} in {section}{closest(part, fields)}; "
                f"known keys: {sorted(fields)}"
            )
        walked.append(part)
        tp = fields[part]
    return tp


def convert_dotted(cls: type, key: str, value: Any, where: str = "config") -> Any:
    """`value` converted to the type of the dotted field `key` of dataclass `cls` (errors name `key`)."""
    return convert(value, resolve_dotted(cls, key, where), key)


@functools.cache
def _field_comments(cls: type) -> dict[str, str]:
    """The `# ...` comment on each field's line in the class source (shown by `--help`); {} without source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, flags=re.MULTILINE)
    return {name: comment.strip() for name, comment in found}


def field_rows(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """`(dotted name, type, default, comment)` for every leaf field of dataclass `cls`, sections expanded
    (for `--help`)."""
    rows = []
    hints = field_types(cls)
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if dataclasses.is_dataclass(tp):
            rows += field_rows(tp, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", describe_type(tp), default, comments.get(f.name, "")))
    return rows


def cli_overrides(rest: list[str], fail: typing.Callable[[str], typing.NoReturn]) -> list[str]:
    """The command line's config overrides, `--section.key value` or `--section.key=value` (what `train` and
    `demo` both take) -> ["section.key=value", ...]; `fail(message)` reports anything else (argparse's `error`)."""
    overrides = []
    i = 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--"):
            fail(f"unexpected argument {item!r}; overrides look like --section.key value")
        if "=" in item:
            overrides.append(item[2:])
            i += 1
        elif i + 1 < len(rest):
            overrides.append(f"{item[2:]}={rest[i + 1]}")
            i += 2
        else:
            fail(f"override {item} needs a value")
    return overrides
