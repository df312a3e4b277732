"""Typed, frozen, strict configs: YAML in, unknown keys rejected by name.

`from_mapping(cls, data)` builds any (nested) frozen dataclass from plain data,
checking types so that a typo or a wrong type fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from relscope.errors import ConfigError, clip, short

T = TypeVar("T")


_MAX_ALIASES = 100  # anchors are for reuse, not for "billion laughs" documents that expand without bound


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping and documents made of many aliases."""

    aliases = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > _MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"more than {_MAX_ALIASES} aliases (*name); at line {mark.line + 1}")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        explicit = sum(key.tag != "tag:yaml.org,2002:merge" for key, _ in node.value)
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # merged keys (`<<: *defaults`) go first; overriding one is no duplicate
        seen: dict[Any, int] = {}
        for key_node, _ in node.value[len(node.value) - explicit:]:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key (a list or a mapping): SafeLoader says so itself
                break
            if first is not None:
                raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, line: int) -> None:
        super().__init__(key, first, line)
        self.key, self.first, self.line = key, first, line


@dataclasses.dataclass(frozen=True)
class CliOption:
    """How a settings field appears on the command line (read by relscope.cli.flags)."""

    help: str  # the one help text; the field's default is appended to it there
    flag: str | None = None  # default: --field-name (--no-field-name for a bool that defaults to true)
    positional: bool = False
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    repeat: bool = False  # given once per value (--run a --run b) instead of once with several
    required: bool = False  # must be given on the command line even though the field has a default (the API's)
    unset_as: int | None = None  # the command-line value that means None (e.g. --max-pairs 0: every pair)


def option(help: str, *, flag: str | None = None, positional: bool = False, metavar: str | None = None,
           choices: typing.Sequence[str] | None = None, repeat: bool = False, required: bool = False,
           unset_as: int | None = None) -> dict[str, CliOption]:
    """Field metadata that puts a settings field on the command line, so that its default, type and help live once,
    in the dataclass: `top_k: int = field(default=100, metadata=option("passages per query"))`."""
    return {"cli": CliOption(help, flag, positional, metavar, tuple(choices) if choices else None, repeat, required,
                             unset_as)}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error naming the file when it is not one."""
    from relscope.io import read_input_text

    path = Path(path)
    text = read_input_text(path, "config")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as err:
        raise ConfigError(f"{path}:{err.line}: key {short(err.key)} is given twice (first on line {err.first}); "
                          "keep one") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{at}: not valid YAML (line {mark.line + 1 if mark else '?'}: {clip(problem, 120)}); "
                          "fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def from_mapping(cls: type[T], data: dict[str, Any], source: str = "config",
                 names: typing.Mapping[str, str] | None = None) -> T:
    """Build dataclass `cls` from `data`; `source` prefixes every error (file or key path), and a value of the wrong
    type is named `source.key`, or `names[key]` where given (the command line's flag)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"{source}: key {short(odd[0])} is not a name; valid keys are: {', '.join(sorted(fields))}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {short(unknown[0])}; valid keys are: {', '.join(sorted(fields))}"
        )
    hints = get_type_hints(cls)
    names = names or {}
    values = {name: _coerce(hints[name], value, names.get(name, f"{source}.{name}")) for name, value in data.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing required key {missing[0]!r}")
    try:
        return cls(**values)
    except (ValueError, TypeError, ConfigError) as err:  # __post_init__'s range checks, named by `source`
        raise ConfigError(f"{source}: {clip(str(err), 300)}") from None


def to_mapping(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for YAML/JSON output."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    """`obj` (settings or plain data) as YAML in field order: the config a run writes beside its outputs."""
    return yaml.safe_dump(to_mapping(obj), sort_keys=False)


def set_dotted(values: dict[str, Any], assignment: str) -> None:
    """Apply one `key.sub=value` override (value parsed as YAML) to nested plain data."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {short(assignment)}: expected KEY=VALUE, e.g. lora.rank=8")
    try:
        value = yaml.load(raw, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, _DuplicateKey):
        raise ConfigError(f"--set {short(assignment)}: the value is not valid YAML") from None
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {short(assignment)}: {short(part)} is not a mapping")
    node[leaf] = value


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(a) for a in get_args(hint))
            raise ConfigError(f"{key}: {short(value)} is not allowed; choose one of {choices}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {short(value)}")
        (item,) = get_args(hint)[:1] or (Any,)
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, key)
    return _coerce_scalar(hint, value, key)


_KIND = {int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
_YAML11_EXPONENT = re.compile(r"[-+]?\d+[eE][-+]?\d+")


def _coerce_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is Any:
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a path, got {short(value)}")
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 1e300:
            raise ConfigError(f"{key}: {short(value)} is not a usable number; give a number such as 0.5")
        return float(value)
    if hint is float and isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
        value = float(value)  # PyYAML (YAML 1.1) reads 1e-3 as a string; everyone means 0.001
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value} is not a finite number; give a number such as 0.5")
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {short(value)}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {short(value)}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {_KIND.get(hint, hint.__name__)}, got {short(value)}")
    return value


DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def check_device_name(device: str | None, key: str = "device") -> None:
    """A device name torch knows (cpu, cuda, cuda:N, mps); whether this machine has it is checked at load."""
    if device is not None and not _DEVICE.fullmatch(device):
        raise ValueError(f"{key} {short(device)} is not a device; use cpu, cuda, cuda:N or mps")


def check_dtype_name(dtype: str, key: str = "dtype") -> None:
    """A dtype name relscope loads models in (auto, float32, bfloat16, float16); a ValueError names `key` otherwise."""
    if dtype not in DTYPES:
        raise ValueError(f"{key} {short(dtype)} is not one of {', '.join(DTYPES)}")
