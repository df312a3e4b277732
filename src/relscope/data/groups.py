"""Tevatron-style training groups in JSON lines.

`{"query_id", "query", "positive_passages": [{"text", "docid"?, "grade"?}],
  "negative_passages": [{"text", "docid"?, "kind"?, "grade"?}]}`

`grade` (relscope's addition, optional) is the passage's judged grade: graded objectives weigh passages by it. A
positive without one counts as relevant (grade 1), a negative as not (grade 0).
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
from relscope.measures import MAX_GRADE


@dataclass(frozen=True)
class NegativePassage:
    text: str
    kind: str = "hard"  # "hard" (from a first-stage run) or "random" (from the collection)
    pid: str = ""
    grade: int = 0  # a judged grade below the group's positive's (graded groups); 0: not relevant


@dataclass(frozen=True)
class TrainingGroup:
    qid: str
    query: str
    positives: tuple[str, ...]
    negatives: tuple[NegativePassage, ...] = field(default_factory=tuple)
    positive_grades: tuple[int, ...] = ()  # one per positive in graded groups; empty: each positive counts 1

    def positive_grade(self, index: int) -> int:
        """The judged grade of positive `index` (1 where the group has no grades)."""
        return self.positive_grades[index] if self.positive_grades else 1


def first_negative(group: TrainingGroup, kind: str = "hard") -> str | None:
    """The text of the group's first non-relevant negative of `kind` (hard, random, or any): a graded group's
    partly relevant passages (grade > 0) are never taken as the negative of a comparison."""
    return next((n.text for n in group.negatives if (kind == "any" or n.kind == kind) and not n.grade), None)


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
            "positive_passages": [{"text": t, **({"grade": g.positive_grades[i]} if g.positive_grades else {})}
                                  for i, t in enumerate(g.positives)],
            "negative_passages": [
                {"text": n.text, "kind": n.kind, **({"docid": n.pid} if n.pid else {}),
                 **({"grade": n.grade} if n.grade else {})} for n in g.negatives
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
    items = [_passage(p, loc, "positive_passages", i) for i, p in enumerate(_list(record, "positive_passages", loc))]
    positives = tuple(_text(p.get("text"), f"{loc}: positive_passages[{i}].text") for i, p in enumerate(items))
    if not positives:
        raise DataError(f"{loc}: query {qid} has no positive_passages; every group needs at least one")
    graded = [_grade(p, f"{loc}: positive_passages[{i}]", low=1) for i, p in enumerate(items)]
    if any(g is not None for g in graded) and None in graded:
        raise DataError(f"{loc}: positive_passages[{graded.index(None)}] has no grade where others have; give every "
                        "positive a grade or none")
    negatives = tuple(
        _negative(p, loc, i) for i, p in enumerate(_list(record, "negative_passages", loc, required=False))
    )
    group = TrainingGroup(qid, query, positives, negatives, tuple(g for g in graded if g is not None))
    top = max((n.grade for n in negatives), default=0)
    if top and not group.positive_grades:
        raise DataError(f"{loc}: a negative has grade {top} but the positives have none; give every positive its "
                        "grade (a positive without one counts as grade 1)")
    if group.positive_grades and top >= min(group.positive_grades):
        raise DataError(f"{loc}: a negative has grade {top}, not below every positive's; a negative must be less "
                        "relevant than the positives")
    return group


def _negative(item: Any, loc: str, index: int) -> NegativePassage:
    p = _passage(item, loc, "negative_passages", index)
    text = _text(p.get("text"), f"{loc}: negative_passages[{index}].text")
    grade = _grade(p, f"{loc}: negative_passages[{index}]", low=0)
    return NegativePassage(text, str(p.get("kind", "hard")), str(p.get("docid", "")), grade or 0)


def _grade(passage: dict, what: str, low: int) -> int | None:
    """The passage's optional judged grade, a whole number from `low` to MAX_GRADE."""
    if "grade" not in passage:
        return None
    grade = passage["grade"]
    if isinstance(grade, bool) or not isinstance(grade, int) or not low <= grade <= MAX_GRADE:
        raise DataError(f"{what}.grade: {grade!r} is not a grade from {low} to {MAX_GRADE}; give a whole number "
                        "or leave it out")
    return grade


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
