"""Errors a user can cause. Each message names the file/line/key and the fix.

The CLI prints these in one line and exits non-zero, with no traceback.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class RelscopeError(Exception):
    """A problem in the user's input, config or environment, with its fix."""


class DataError(RelscopeError):
    """Malformed or missing data files."""


class ConfigError(RelscopeError):
    """A bad configuration value or key."""


class ModelError(RelscopeError):
    """A model that cannot be loaded or is of an unsupported family."""


class TrainingError(RelscopeError):
    """Training cannot go on (a non-finite loss or gradient); the last checkpoint is intact."""


class BusyError(RelscopeError):
    """Another relscope run is writing to the same output folder."""


def overflow_hint(dtype: torch.dtype | str) -> str:
    """The fix for non-finite numbers: float16 overflows past 65504, which bf16 and fp32 do not."""
    if str(dtype).endswith("float16") and "bfloat16" not in str(dtype):
        return ("; float16 overflowed (its largest value is 65504): load the model with --dtype bfloat16 "
                "(or float32)")
    return "; check the model weights and the inputs"


def where(path: str | Path, line: int | None = None) -> str:
    """`file:line` for error messages (line is 1-based)."""
    return f"{path}:{line}" if line is not None else str(path)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 60, 60, 4, 4


def short(value: Any, limit: int = 80) -> str:
    """repr() bounded in length and depth, so an error line stays one short line whatever the value."""
    return clip(_REPR.repr(value) if not isinstance(value, str) else repr(value), limit)


def clip(text: str, limit: int = 80) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_finite_number(value: Any) -> bool:
    """A real int or float (not a bool) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_range(key: str, value: Any, least: float | None = None, most: float | None = None,
                integer: bool = False) -> None:
    """One ConfigError naming `key` unless `value` is a finite number (a whole one if `integer`) in range."""
    kind = "a whole number" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (least is None or value >= least) and (most is None or value <= most)
    if not ok:
        span = (f" from {least:g} to {most:g}" if least is not None and most is not None
                else f" >= {least:g}" if least is not None else f" <= {most:g}" if most is not None else "")
        raise ConfigError(f"{key} {short(value)}: must be {kind}{span}")
