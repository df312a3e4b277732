"""Rows (a list of dicts with the same keys) to CSV and Markdown, written atomically."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from relscope.io import atomic_write_text


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def to_csv(rows: Sequence[dict]) -> str:
    """CSV text with the first row's keys as the header; floats at four decimals, None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def to_markdown(rows: Sequence[dict], bold_best: str | None = None) -> str:
    """A GitHub table; `bold_best` names a column whose highest value is bolded."""
    columns = list(rows[0])
    best = max((r[bold_best] for r in rows if isinstance(r.get(bold_best), float)), default=None) if bold_best else None
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row[c]).replace("|", "\\|") for c in columns]  # a '|' inside a cell would split it
        cells = [f"**{cell}**" if c == bold_best and row[c] == best else cell for c, cell in zip(columns, cells)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict], stem: Path, title: str, bold_best: str | None = None) -> None:
    """stem.csv and stem.md (a title line, then the table)."""
    atomic_write_text(stem.with_suffix(".csv"), to_csv(rows))
    atomic_write_text(stem.with_suffix(".md"), f"### {title}\n\n" + to_markdown(rows, bold_best))
