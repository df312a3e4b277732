"""Fusing runs: a reranker's scores with the first stage's (the interpolation IR papers report beside
the reranker alone). Per query, each run's scores are normalised, then summed with weights.

    zscore  (s - mean) / std over the query's passages
    minmax  (s - min) / (max - min)
    rrf     1 / (k + rank), k = 60 (Cormack et al. 2009): scores ignored, ranks only

Only passages present in every run are fused; the weights are fixed by the user, never fitted
to the evaluation queries.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from relscope.data.types import Run, ScoredDoc, sort_run
from relscope.errors import ConfigError, DataError, where

NORMS = ("zscore", "minmax", "rrf")
RRF_K = 60


def check_fusion(n_runs: int, weights: Sequence[float], norm: str) -> None:
    """Refuse a fusion request before any run is read: one finite weight >= 0 per run (not all 0), a known norm."""
    if n_runs != len(weights) or n_runs < 2:
        raise ConfigError(f"fusion needs two or more runs and one weight each; got {n_runs} runs, "
                          f"{len(weights)} weights; e.g. --run a.trec --run b.trec --weights 0.7 0.3")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) \
                or weight < 0:
            raise ConfigError(f"fusion weights: {weight!r} is not a finite number >= 0; e.g. --weights 0.7 0.3")
    if not any(weights):
        raise ConfigError("fusion weights are all 0, which ranks nothing; give at least one positive --weights value")
    if norm not in NORMS:
        raise ConfigError(f"fusion norm {str(norm)[:40]!r} is unknown; choose one of {', '.join(NORMS)}")


def fuse_runs(runs: Sequence[Run], weights: Sequence[float], norm: str = "zscore",
              names: Sequence[str] | None = None) -> Run:
    """The fused run, best first per query (ties in the first run's order); `names` label the runs in errors."""
    check_fusion(len(runs), weights, norm)
    names = list(names) if names else [f"run {i + 1}" for i in range(len(runs))]
    for run, name in zip(runs, names):
        _check_finite(run, name)
    fused: Run = {}
    for qid in runs[0]:
        # RRF fuses each run's own ranks (its list order, ties included), not ranks re-derived from its scores
        per_run = [{d.pid: (-float(i) if norm == "rrf" else d.score) for i, d in enumerate(run.get(qid, []))}
                   for run in runs]
        pids = [d.pid for d in runs[0][qid] if all(d.pid in scores for scores in per_run)]
        if not pids:
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, in words
            total = sum(w * _normalise(np.array([s[p] for p in pids], dtype=np.float64), norm)
                        for w, s in zip(weights, per_run))
        if not np.isfinite(total).all():
            raise ConfigError(f"fused scores of query {qid} overflow with weights {list(weights)}; give smaller "
                              "weights (only their ratio matters)")
        fused[qid] = sort_run([ScoredDoc(p, float(v)) for p, v in zip(pids, total)])
    if not fused:
        raise DataError(f"{' and '.join(names)} share no passage of any query, so the fused run would be empty; "
                        "fuse runs over the same queries and collection")
    return fused


def _check_finite(run: Run, name: str) -> None:
    for qid, docs in run.items():
        for doc in docs:
            if not math.isfinite(doc.score):
                at = where(name, doc.line) if doc.line else f"{name}, query {qid}"
                raise DataError(f"{at}: score {doc.score} of passage {doc.pid} is not a finite number; "
                                "fusion normalises scores, so every score must be a number")


def _normalise(scores: np.ndarray, norm: str) -> np.ndarray:
    if norm == "rrf":
        ranks = np.empty(len(scores))
        ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
        return 1.0 / (RRF_K + ranks)
    if norm == "minmax":
        spread = scores.max() - scores.min()
        return (scores - scores.min()) / spread if spread > 0 else np.zeros_like(scores)
    spread = scores.std()
    return (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)
