"""Measures are values and a library computes them: ir_measures, never hand-written metrics.

The ranking evaluated is the run's list order, exactly as `write_run` writes it (ties in score kept in
first-stage order). ir_measures is given scores that encode that order (no ties left), because its providers
break ties differently: pytrec_eval by document id, descending (trec_eval's rule), the msmarco provider
(RR@k) by input order, so one run's RR@10 and P@1 could see two different rankings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ir_measures
import numpy as np

from relscope.data.types import Qrels, Run, ScoredDoc
from relscope.errors import DataError
from relscope.evaluation.settings import EvaluateSettings
from relscope.measures import DEFAULT_MEASURES, MAX_GRADE, check_measures, parse_measure


def parse_measures(names: Sequence[str], source: str = "measures") -> list[ir_measures.Measure]:
    """ir_measures measures, each checked (see relscope.measures); a ConfigError names the first bad one."""
    return [parse_measure(name, source) for name in check_measures(names, source)]


def ranked_scores(docs: Sequence[ScoredDoc]) -> dict[str, float]:
    """{pid: score} that orders the passages exactly as listed (n, n-1, ..., 1): ties cannot be reordered."""
    scores: dict[str, float] = {}
    for i, doc in enumerate(docs):
        scores.setdefault(doc.pid, float(len(docs) - i))  # a repeated pid keeps its first (best) rank
    return scores


def check_evaluable(qrels: Qrels, run: Run, sources: tuple[str, str] = ("qrels", "run")) -> None:
    """Refuse, before any work, qrels ir_measures cannot take and a run that shares no query with them."""
    for qid, judged in qrels.items():
        for pid, grade in judged.items():
            if isinstance(grade, bool) or not isinstance(grade, int) or abs(grade) > MAX_GRADE:
                raise DataError(f"{sources[0]}: grade {grade!r} of query {qid} passage {pid} is not an integer "
                                f"within +-{MAX_GRADE}; TREC grades are small integers such as 0-3 (is a column "
                                "out of place?)")
    if not any(docs and qid in qrels for qid, docs in run.items()):
        raise DataError(f"{sources[1]} and {sources[0]} share no query id (the run has {_some(run)}; the qrels "
                        f"judge {_some(qrels)}); evaluate a run with the qrels of its own queries")


def _some(ids) -> str:
    shown = [str(i)[:40] for i in list(ids)[:3]]
    return ", ".join(shown) + (" ..." if len(ids) > 3 else "") if shown else "none"


def evaluate_run(
    qrels: Qrels, run: Run, measures: Sequence[str] = DEFAULT_MEASURES, sources: tuple[str, str] = ("qrels", "run")
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean over judged queries, per query) for each measure, keyed by its string form.

    The ranking is the run's list order (see the module docstring). Queries without judgments are
    left out, as trec_eval does; a judged query the run lacks is left out too (trec_eval without -c).
    No query in common is a DataError naming `sources` (qrels, run), never a NaN.
    """
    parsed = parse_measures(measures)
    check_evaluable(qrels, run, sources)
    judged = {q: ranked_scores(docs) for q, docs in run.items() if q in qrels and docs}
    qrels = {q: qrels[q] for q in judged}  # ir_measures would average a judged query the run lacks in as 0
    per_query: dict[str, dict[str, float]] = {}
    try:
        for metric in ir_measures.iter_calc(parsed, qrels, judged):
            per_query.setdefault(metric.query_id, {})[str(metric.measure)] = float(metric.value)
        aggregate = {str(m): float(v) for m, v in ir_measures.calc_aggregate(parsed, qrels, judged).items()}
    except Exception as err:  # noqa: BLE001  (a provider that rejects these ids, e.g. gdeval's numeric query ids)
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise DataError(f"{sources[1]} with {sources[0]}: ir_measures could not compute {', '.join(measures)} "
                        f"({detail}); try other measures") from None
    return {name: aggregate.get(str(m), float("nan")) for name, m in zip(measures, parsed)}, {
        q: {name: row.get(str(m), float("nan")) for name, m in zip(measures, parsed)} for q, row in per_query.items()
    }


def evaluate_job(settings: EvaluateSettings) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean, per query) of `settings.measures` for the run against the qrels.

    A run's ranking is its order as read: by score, ties by its rank column (then by line). trec_eval ignores the
    rank column and breaks ties by document id; a run that states its ranks is evaluated in that order.
    """
    from relscope.data.trec import read_qrels, read_run

    qrels, run = read_qrels(settings.qrels), read_run(settings.run)
    return evaluate_run(qrels, run, settings.measures, (settings.qrels, settings.run))


def paired_difference(after: Mapping[str, float], before: Mapping[str, float], resamples: int = 1000,
                      seed: int = 0) -> dict[str, float | int]:
    """mean(after - before) over the queries both score, its 95% paired bootstrap interval (queries resampled,
    percentile method, scipy.stats.bootstrap) and how many queries went up, down or stayed.

    Paired because both runs rank the same queries: per-query differences vary far less than either run, which is
    what lets 43 queries say anything. Under two queries the interval is NaN (nothing to resample); a query
    either run has no finite value for is left out (and not counted in `queries`)."""
    from scipy import stats  # ~0.3 s to import: only where an interval is computed

    queries = [q for q in after if q in before]
    gaps = np.array([after[q] - before[q] for q in queries], dtype=float)
    gaps = gaps[np.isfinite(gaps)]  # a measure ir_measures left out for a query compares nothing there
    low = high = float("nan")
    if len(gaps) >= 2 and np.ptp(gaps) > 0:
        interval = stats.bootstrap((gaps,), np.mean, n_resamples=resamples, method="percentile",
                                   rng=seed).confidence_interval
        low, high = float(interval.low), float(interval.high)
    elif len(gaps) >= 2:  # every query moved by the same amount: no spread to resample
        low = high = float(gaps[0])
    return {"difference": float(gaps.mean()) if len(gaps) else float("nan"), "low": low, "high": high,
            "better": int((gaps > 0).sum()), "worse": int((gaps < 0).sum()), "same": int((gaps == 0).sum()),
            "queries": len(gaps)}
