"""Fusing runs: a reranker's scores with the first stage's (the interpolation IR papers report beside
the reranker alone). Per query, each run's scores are normalised, then summed with weights.

    zscore  (s - mean) / std over the query's passages
    minmax  (s - min) / (max - min)
    rrf     1 / (k + rank), k = 60 (Cormack et al. 2009): scores ignored, ranks only

Only passages present in every run are fused; the weights are fixed by the user, never fitted
to the evaluation queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from relscope.data.types import Run, ScoredDoc, sort_run
from relscope.errors import ConfigError

NORMS = ("zscore", "minmax", "rrf")
RRF_K = 60


def fuse_runs(runs: Sequence[Run], weights: Sequence[float], norm: str = "zscore") -> Run:
    if len(runs) != len(weights) or len(runs) < 2:
        raise ConfigError(f"fusion needs two or more runs and one weight each; got {len(runs)} runs, "
                          f"{len(weights)} weights")
    if norm not in NORMS:
        raise ConfigError(f"fusion norm {norm!r} is unknown; choose one of {', '.join(NORMS)}")
    fused: Run = {}
    for qid in runs[0]:
        per_run = [{d.pid: d.score for d in run.get(qid, [])} for run in runs]
        pids = [d.pid for d in runs[0][qid] if all(d.pid in scores for scores in per_run)]
        if not pids:
            continue
        total = sum(w * _normalise(np.array([s[p] for p in pids], dtype=np.float64), norm)
                    for w, s in zip(weights, per_run))
        fused[qid] = sort_run([ScoredDoc(p, float(v)) for p, v in zip(pids, total)])
    return fused


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
