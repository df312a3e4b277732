"""Atomic writes: a file is either complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def output_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder`/.relscope.lock while writing there; a second live run is refused, a stale lock taken over."""
    from relscope.errors import BusyError, ConfigError

    if Path(folder).exists() and not Path(folder).is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder; choose another --out")
    lock = Path(folder) / ".relscope.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()}"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = lock.read_text(encoding="utf-8").split() if lock.exists() else []
            if owner and _alive(owner):
                raise BusyError(f"{folder}: another relscope run (pid {owner[0]} on {owner[1]}) is writing here; "
                                "wait for it to end or choose another --out") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone (killed, crashed)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(me)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(owner: list[str]) -> bool:
    if len(owner) < 2:
        return False  # unreadable: left by a run killed while writing it
    if owner[1] != socket.gethostname():
        return True  # another machine's lock on a shared disk: its process cannot be checked from here
    try:
        os.kill(int(owner[0]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
