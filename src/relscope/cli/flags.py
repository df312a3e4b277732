"""Command-line flags derived from the settings dataclasses: each field's type, default and help text live once, in
the dataclass (`relscope.config.option`), and the flags, their defaults and their help come from there.

A flag left out is left out of the settings too, so the dataclass default applies; the values given go through
`from_mapping`, the same typed, checked path a YAML config takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from relscope.config import CliOption, from_mapping

T = TypeVar("T")


def add_settings(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = ()) -> None:
    """One argument per field of `cls` that has `option(...)` metadata (except those in `skip`)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        spec = field.metadata.get("cli")
        if spec is not None and field.name not in skip:
            default = _default(field)
            names = _names(field.name, spec, hints[field.name], default)
            arguments = _arguments(field.name, spec, hints[field.name], default)
            takes_value = arguments.get("action") not in ("store_true", "store_false")
            if takes_value and not spec.positional and "metavar" not in arguments and "choices" not in arguments:
                arguments["metavar"] = names[0].lstrip("-").replace("-", "_").upper()  # --run RUN, not RUNS
            parser.add_argument(*names, **arguments)


def add_output(parser: argparse.ArgumentParser, quiet: bool = True, what: str = "output folder") -> None:
    """--out (where the job writes; not a setting: the same settings give the same outputs wherever they go) and
    --quiet (no progress bars)."""
    parser.add_argument("--out", required=True, help=what)
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bars")


def settings_from(cls: type[T], args: argparse.Namespace, source: str, base: Mapping[str, Any] | None = None,
                  **extra: Any) -> T:
    """The settings the user gave, checked by `from_mapping`: flags override `base` (a YAML config's keys), and
    anything left out keeps the dataclass default."""
    given, hints = vars(args), typing.get_type_hints(cls)
    flags, values = {}, dict(base or {})
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        spec = f.metadata.get("cli")
        if spec is None or f.name not in given:
            continue
        values[f.name] = None if spec.unset_as is not None and given[f.name] == spec.unset_as else given[f.name]
        flags[f.name] = _names(f.name, spec, hints[f.name], _default(f))[0]  # a bad value names the flag given
    return from_mapping(cls, {**values, **extra}, source, names=flags)


def cli_fields(cls: type) -> list[str]:
    """The fields of `cls` that are on the command line."""
    return [f.name for f in dataclasses.fields(cls) if "cli" in f.metadata]


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _names(name: str, spec: CliOption, hint: Any, default: Any) -> list[str]:
    if spec.positional:
        return [name]
    if spec.flag:
        return [spec.flag]
    flag = name.replace("_", "-")
    return [f"--no-{flag}" if _base(hint) is bool and default is True else f"--{flag}"]


def _arguments(name: str, spec: CliOption, hint: Any, default: Any) -> dict[str, Any]:
    kind = _base(hint)
    arguments: dict[str, Any] = {"help": _help(spec.help, default, kind), "default": argparse.SUPPRESS}
    if spec.positional:
        if default is not dataclasses.MISSING and not spec.required:
            arguments["nargs"] = "?"
    else:
        arguments["dest"] = name
        arguments["required"] = default is dataclasses.MISSING or spec.required
    if kind is bool:
        arguments["action"] = "store_false" if default is True else "store_true"
        return arguments
    if get_origin(kind) in (tuple, list):
        kind = get_args(kind)[0]
        arguments["action" if spec.repeat else "nargs"] = "append" if spec.repeat else "+"
    if get_origin(kind) is Literal:
        arguments["choices"] = list(get_args(kind))
        kind = type(get_args(kind)[0])
    if spec.choices:
        arguments["choices"] = list(spec.choices)
    if kind in (int, float):
        arguments["type"] = kind
    if spec.metavar:
        arguments["metavar"] = spec.metavar
    return arguments


def _base(hint: Any) -> Any:
    """`hint` without `| None`."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        return options[0] if len(options) == 1 else hint
    return hint


def _help(text: str, default: Any, kind: Any) -> str:
    """The field's help with its default, so that the two cannot drift apart."""
    if default is dataclasses.MISSING or default is None or kind is bool or default == ():
        return text
    shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)
    return f"{text} (default: {shown})".replace("%", "%%")
