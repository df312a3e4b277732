"""Errors a user can cause. Each message names the file/line/key and the fix.

The CLI prints these in one line and exits non-zero, with no traceback.
"""

from __future__ import annotations

from pathlib import Path


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


def overflow_hint(dtype) -> str:
    """The fix for non-finite numbers: float16 overflows past 65504, which bf16 and fp32 do not."""
    if str(dtype).endswith("float16") and "bfloat16" not in str(dtype):
        return ("; float16 overflowed (its largest value is 65504): load the model with --dtype bfloat16 "
                "(or float32)")
    return "; check the model weights and the inputs"


def where(path: str | Path, line: int | None = None) -> str:
    """`file:line` for error messages (line is 1-based)."""
    return f"{path}:{line}" if line is not None else str(path)
