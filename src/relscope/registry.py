"""One small Registry class: extend relscope by registering, not by mode strings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from relscope.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (heads, templates, model specs, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Register `entry` under `name`; without `entry`, act as a decorator."""
        if entry is not None:
            return self._add(name, entry)
        return lambda obj: self._add(name, obj)

    def _add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry registered as `name`; a ConfigError lists the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """The registered names, sorted (for choices and error messages)."""
        return sorted(self._entries)
