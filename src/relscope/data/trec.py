"""TREC qrels (`qid 0 pid grade`) and runs (`qid Q0 pid rank score tag`)."""

from __future__ import annotations

import math
from pathlib import Path

from relscope.data.lines import iter_lines, split_fields
from relscope.data.types import Qrels, Run, ScoredDoc, sort_run
from relscope.errors import DataError, where
from relscope.io import atomic_write_text
from relscope.measures import MAX_GRADE

QRELS_LAYOUT = "qid iteration pid grade"
RUN_LAYOUT = "qid Q0 pid rank score tag"


def read_qrels(path: str | Path) -> Qrels:
    """Graded judgments; a duplicate (qid, pid) or a non-integer grade is an error."""
    qrels: Qrels = {}
    for line, text in iter_lines(path, "qrels"):
        qid, _, pid, grade = split_fields(text, path, line, 4, QRELS_LAYOUT)
        try:
            value = int(grade)
        except ValueError:
            raise DataError(
                f"{where(path, line)}: grade {grade!r} is not an integer; TREC qrels grades are "
                "integers such as 0-3"
            ) from None
        if abs(value) > MAX_GRADE:
            raise DataError(f"{where(path, line)}: grade {value} is beyond +-{MAX_GRADE}; TREC grades are small "
                            "integers such as 0-3 (is a column out of place?)")
        judged = qrels.setdefault(qid, {})
        if pid in judged:
            raise DataError(
                f"{where(path, line)}: duplicate judgment for query {qid} passage {pid}; keep one"
            )
        judged[pid] = value
    if not qrels:
        raise DataError(f"{path}: no judgments (the file is empty); give a TREC qrels file, `{QRELS_LAYOUT}`")
    return qrels


def read_run(path: str | Path) -> Run:
    """A ranked run, best first per query (ordered by score, ties by rank)."""
    rows: dict[str, list[tuple[int, ScoredDoc]]] = {}
    seen: dict[tuple[str, str], int] = {}
    for line, text in iter_lines(path, "run"):
        qid, _, pid, rank, score, _tag = split_fields(text, path, line, 6, RUN_LAYOUT)
        try:
            rank_value, score_value = int(rank), float(score)
        except ValueError:
            raise DataError(
                f"{where(path, line)}: rank {rank!r} must be an integer and score {score!r} a "
                "number; fix this line"
            ) from None
        if not math.isfinite(score_value):
            raise DataError(f"{where(path, line)}: score {score!r} is not a finite number; a run's scores rank "
                            "its passages, so fix or remove this line")
        if (qid, pid) in seen:
            raise DataError(
                f"{where(path, line)}: passage {pid} appears twice for query {qid} (first on line "
                f"{seen[qid, pid]}); a run lists each passage once per query"
            )
        seen[qid, pid] = line
        rows.setdefault(qid, []).append((rank_value, ScoredDoc(pid, score_value, line)))
    if not rows:
        raise DataError(f"{path}: no ranked passages (the file is empty); give a TREC run, `{RUN_LAYOUT}`")
    return {qid: sort_run([d for _, d in sorted(docs, key=lambda r: r[0])]) for qid, docs in rows.items()}


def format_run(run: Run, tag: str) -> str:
    """TREC run text; ranks follow list order (callers pass sorted lists), and so do the printed scores."""
    out = []
    for qid, docs in run.items():
        for rank, (doc, score) in enumerate(zip(docs, tie_free_scores([d.score for d in docs])), start=1):
            out.append(f"{qid} Q0 {doc.pid} {rank} {score} {tag}\n")
    return "".join(out)


def tie_free_scores(scores: list[float]) -> list[str]:
    """Scores as printed: strictly decreasing down the list at float32 precision, so that trec_eval (which reads
    scores as float32, breaks ties by document id and ignores the rank column) ranks the file as written. Six
    decimals where they suffice; a tie (bf16 heads make them common) is written one float32 step below the score
    above it, in the shortest digits that keep it there."""
    import numpy as np

    printed: list[str] = []
    previous = np.float32(np.inf)
    for score in scores:
        value = min(np.float32(np.clip(score, -3e38, 3e38)), np.nextafter(previous, np.float32(-np.inf)))
        text = f"{float(value):.6f}"
        if not np.float32(float(text)) < previous:
            text = str(value)  # numpy's shortest repr that reads back as this float32
        printed.append(text)
        previous = np.float32(float(text))
    return printed


def write_run(run: Run, path: str | Path, tag: str = "relscope") -> None:
    """`run` as a TREC run file ranked in list order, which trec_eval and `read_run` read back the same."""
    if any(ch.isspace() for ch in tag) or not tag:
        raise DataError(f"run tag {tag!r} must be one word without spaces")
    atomic_write_text(path, format_run(run, tag))


def write_qrels(qrels: Qrels, path: str | Path) -> None:
    """`qrels` as a TREC qrels file (`qid 0 pid grade`)."""
    lines = [f"{qid} 0 {pid} {grade}\n" for qid, judged in qrels.items() for pid, grade in judged.items()]
    atomic_write_text(path, "".join(lines))
