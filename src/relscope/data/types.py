"""Plain types shared by every reader, writer and evaluator."""

from __future__ import annotations

from dataclasses import dataclass

# qid -> pid -> NIST grade (the dict-of-dicts form ir_measures takes directly).
Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class ScoredDoc:
    """One line of a TREC run. `line` is where it came from (0 when made in memory)."""

    pid: str
    score: float
    line: int = 0


# qid -> documents in rank order (best first).
Run = dict[str, list[ScoredDoc]]


def sort_run(docs: list[ScoredDoc]) -> list[ScoredDoc]:
    """Best first; ties keep their incoming order (so the first-stage rank breaks ties)."""
    return sorted(docs, key=lambda d: -d.score)


def natural_key(ident: str) -> tuple[int, int, str]:
    """Sort ids numerically when they are numbers ("2" before "10"), else as text."""
    return (0, int(ident), "") if ident.isdigit() else (1, 0, ident)


def run_scores(run: Run) -> dict[str, dict[str, float]]:
    """The dict-of-dicts form ir_measures takes."""
    return {qid: {d.pid: d.score for d in docs} for qid, docs in run.items()}
