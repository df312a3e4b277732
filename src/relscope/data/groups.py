"""Tevatron-style training groups in JSON lines.

`{"query_id", "query", "positive_passages": [{"text", "docid"?}],
  "negative_passages": [{"text", "docid"?, "kind"?}]}`
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relscope.data.lines import iter_lines
from relscope.errors import DataError, where
from relscope.io import atomic_write_text


@dataclass(frozen=True)
class NegativePassage:
    text: str
    kind: str = "hard"  # "hard" (from a first-stage run) or "random" (from the collection)
    pid: str = ""


@dataclass(frozen=True)
class TrainingGroup:
    qid: str
    query: str
    positives: tuple[str, ...]
    negatives: tuple[NegativePassage, ...] = field(default_factory=tuple)


def first_negative(group: TrainingGroup, kind: str = "hard") -> str | None:
    """The text of the group's first negative of `kind` (hard, random, or any)."""
    return next((n.text for n in group.negatives if kind == "any" or n.kind == kind), None)


def read_groups(path: str | Path) -> list[TrainingGroup]:
    """One group per line. A query may have several lines (Tevatron writes one per positive)."""
    return [_parse_group(text, path, line) for line, text in iter_lines(path, "group jsonl")]


def write_groups(groups: Iterable[TrainingGroup], path: str | Path) -> None:
    """The groups as Tevatron-style JSON lines that `read_groups` reads back."""
    rows = []
    for g in groups:
        record = {
            "query_id": g.qid,
            "query": g.query,
            "positive_passages": [{"text": t} for t in g.positives],
            "negative_passages": [
                {"text": n.text, "kind": n.kind, **({"docid": n.pid} if n.pid else {})} for n in g.negatives
            ],
        }
        rows.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(rows))


def _parse_group(text: str, path: str | Path, line: int) -> TrainingGroup:
    loc = where(path, line)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{loc}: not valid JSON ({err.msg}); each line must be one JSON object") from None
    if not isinstance(record, dict):
        raise DataError(f"{loc}: expected a JSON object with query_id, query, positive_passages")
    qid = str(_required(record, "query_id", loc))
    query = _text(_required(record, "query", loc), f"{loc}: key 'query'")
    positives = tuple(
        _text(_passage(p, loc, "positive_passages", i).get("text"), f"{loc}: positive_passages[{i}].text")
        for i, p in enumerate(_list(record, "positive_passages", loc))
    )
    if not positives:
        raise DataError(f"{loc}: query {qid} has no positive_passages; every group needs at least one")
    negatives = tuple(
        _negative(p, loc, i) for i, p in enumerate(_list(record, "negative_passages", loc, required=False))
    )
    return TrainingGroup(qid, query, positives, negatives)


def _negative(item: Any, loc: str, index: int) -> NegativePassage:
    p = _passage(item, loc, "negative_passages", index)
    text = _text(p.get("text"), f"{loc}: negative_passages[{index}].text")
    return NegativePassage(text, str(p.get("kind", "hard")), str(p.get("docid", "")))


def _required(record: dict, key: str, loc: str) -> Any:
    if key not in record:
        raise DataError(f"{loc}: missing key {key!r}; a group needs query_id, query, positive_passages")
    return record[key]


def _list(record: dict, key: str, loc: str, required: bool = True) -> list:
    value = _required(record, key, loc) if required else record.get(key, [])
    if not isinstance(value, list):
        raise DataError(f"{loc}: key {key!r} must be a list of passages")
    return value


def _passage(item: Any, loc: str, key: str, index: int) -> dict:
    if not isinstance(item, dict):
        raise DataError(f"{loc}: {key}[{index}] must be an object with a 'text' key")
    return item


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{what} is missing or empty; give it non-empty text")
    return value.strip()
