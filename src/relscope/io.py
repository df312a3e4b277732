"""Files in and out: one reader for inputs, atomic writes (a file is either complete or absent) and the lock on
an output folder.

Every file relscope writes goes through `atomic_path`: a temporary file beside the target, fsynced, given the
permissions a plain `open()` would give (umask applied: a colleague can read `report.html`), then renamed over the
target. An output folder that cannot be made or written is one error line naming it, before any work.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from relscope.errors import BusyError, ConfigError, DataError

LOCK_NAME = ".relscope.lock"


def umask() -> int:
    """The process's umask; read from /proc where it can be, since os.umask() must briefly change it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create `folder` (and parents) or say in one line why it cannot be, with the fix."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder; choose another {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{folder}: a file stands where the {what} should go; choose another path") from None
    except NotADirectoryError:
        raise ConfigError(f"{folder}: a parent of this {what} is a file, not a folder; choose another path") from None
    except OSError as err:
        raise ConfigError(f"{folder}: cannot create the {what} ({err.strerror}); choose a writable path") from None
    return folder


def check_output_file(path: str | Path, inputs: tuple[str | Path, ...] = ()) -> Path:
    """An output file path that is not a folder nor one of the command's `inputs`, its folder created."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; --out takes a file path here")
    for given in inputs:
        if Path(given).exists() and path.exists() and os.path.samefile(given, path):
            raise ConfigError(f"{path}: is also an input of this command; writing it would destroy that input, "
                              "choose another --out")
    ensure_folder(path.parent)
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; fsync it and rename it over `path` on success."""
    path = Path(path)
    ensure_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise ConfigError(f"{path.parent}: cannot write there ({err.strerror}); choose a writable folder") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp makes 0600; outputs are shared like any written file
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync_folder(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; some filesystems cannot fsync a folder, which only weakens durability."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def output_lock(folder: str | Path) -> Iterator[None]:
    """Hold an OS lock on `folder`/.relscope.lock while writing there; a second live run is refused at once.

    The lock is `filelock`'s (flock): the OS releases it when its process dies, so a killed run leaves no stale lock
    and a recycled pid can never look like a live owner.
    """
    from filelock import FileLock, Timeout

    folder = ensure_folder(folder)
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BusyError(f"{folder}: another relscope run is writing here (it holds {folder / LOCK_NAME}); wait for "
                        "it to end or choose another --out. The lock is released as soon as that process exits"
                        ) from None
    except OSError as err:
        raise ConfigError(f"{folder}: cannot lock the output folder ({err.strerror}); choose a writable --out"
                          ) from None
    try:
        yield
    finally:
        # Unlinked while still held, so a finished run leaves nothing behind; filelock re-checks the inode it
        # locked, so a peer that opened the old file just before cannot take a lock on it.
        (folder / LOCK_NAME).unlink(missing_ok=True)
        lock.release()


# Inputs: every file relscope reads is opened here, so that an OS error is one line naming the file.


def is_input_file(path: str | Path) -> bool:
    """A path that can be read as a file: a regular file, or a pipe/device such as `<(zcat run.gz)`."""
    path = Path(path)
    return path.exists() and not path.is_dir()


def require_file(path: str | Path, what: str) -> Path:
    """`path` if it can be read as a `what` file; else one error naming it and the fix."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a {what} file; give the file's path")
    if not path.exists():
        raise DataError(f"{path}: {what} file not found; check the path (or set RELSCOPE_DATA)")
    return path


@contextmanager
def open_input(path: str | Path, what: str) -> Iterator[BinaryIO]:
    """The one way relscope opens an input file: OS errors (permissions, I/O) become one line naming the file."""
    path = require_file(path, what)
    try:
        handle = path.open("rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read the {what} file ({err.strerror}); check its permissions") from None
    try:
        with handle:
            yield handle
    except OSError as err:
        raise DataError(f"{path}: reading the {what} file failed ({err.strerror}); check the file and the disk"
                        ) from None


def read_input_bytes(path: str | Path, what: str) -> bytes:
    """A whole input file's bytes, through `open_input`."""
    with open_input(path, what) as handle:
        return handle.read()


def read_input_text(path: str | Path, what: str) -> str:
    """A whole input file as UTF-8 text; a bad byte is one error naming the file and the byte offset."""
    data = read_input_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: byte {err.start} is not valid UTF-8; re-encode the {what} file as UTF-8") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 `text` to `path` all at once, so an interrupted run never leaves half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON to `path` all at once (non-JSON values such as paths as strings)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
