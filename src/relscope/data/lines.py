"""Line-level reading with errors that name the file, the line and the fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from relscope.errors import DataError, where
from relscope.io import is_input_file, open_input, read_input_bytes, read_input_text, require_file

__all__ = ["is_input_file", "iter_lines", "open_input", "read_input_bytes", "read_input_text", "require_file",
           "split_fields"]


def iter_lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text without newline); blank lines are skipped.

    Bytes are decoded per line as strict UTF-8 so a bad byte is reported with its line.
    """
    with open_input(path, what) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{where(path, number)}: byte {err.start} is not valid UTF-8; re-encode the "
                    f"file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {Path(path).name}`)"
                ) from None
            text = text.rstrip("\r\n")
            if text.strip():
                yield number, text


def split_fields(
    text: str, path: str | Path, line: int, count: int, layout: str, sep: str | None = None
) -> list[str]:
    """Split a line into exactly `count` fields, or name the expected layout."""
    fields = text.split(sep)
    if len(fields) != count:
        raise DataError(
            f"{where(path, line)}: expected {count} columns ({layout}), found {len(fields)}; "
            "fix or remove this line"
        )
    return fields
