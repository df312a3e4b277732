"""MS MARCO tsv: `id<TAB>text` (queries.tsv, collection.tsv)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from relscope.data.lines import iter_lines, split_fields
from relscope.errors import DataError, where
from relscope.io import atomic_write_text


def read_texts(
    path: str | Path, what: str = "tsv", keep: Collection[str] | None = None
) -> dict[str, str]:
    """id -> text. `keep` limits memory on a full collection (8.8M passages)."""
    texts: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, row in iter_lines(path, what):
        ident, text = split_fields(row, path, line, 2, "id<TAB>text", sep="\t")
        ident = ident.strip()
        if keep is not None and ident not in keep:
            continue
        if not text.strip():
            raise DataError(f"{where(path, line)}: {what} {ident} has empty text; give it text or remove it")
        if ident in texts:
            raise DataError(
                f"{where(path, line)}: duplicate id {ident} (first on line {lines[ident]}); ids must be unique"
            )
        texts[ident], lines[ident] = text.strip(), line
    return texts


def write_texts(texts: Mapping[str, str], path: str | Path) -> None:
    """id -> text as `id<TAB>text` lines that `read_texts` reads back (tabs and newlines in a text become spaces)."""
    rows = []
    for ident, text in texts.items():
        if "\t" in text or "\n" in text:
            text = " ".join(text.split())  # tsv cannot carry tabs/newlines inside a field
        rows.append(f"{ident}\t{text}\n")
    atomic_write_text(path, "".join(rows))
