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


def where(path: str | Path, line: int | None = None) -> str:
    """`file:line` for error messages (line is 1-based)."""
    return f"{path}:{line}" if line is not None else str(path)
