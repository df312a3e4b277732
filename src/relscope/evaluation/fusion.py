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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from relscope.data.types import Run, ScoredDoc, sort_run
from relscope.errors import ConfigError, DataError, where
from relscope.evaluation.settings import FuseSettings, check_fusion

RRF_K = 60


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


def fuse_job(settings: FuseSettings, out: str | Path) -> list[dict[str, str | float]]:
    """Fuse the runs into `out` (a TREC run, with its manifest beside it) and, given qrels, evaluate every input run
    and the fused one: one row each. The output path is checked before any run is read, every number before
    anything is written."""
    from relscope.config import to_mapping
    from relscope.data.trec import read_qrels, read_run, write_run
    from relscope.evaluation.metrics import evaluate_run
    from relscope.io import atomic_write_json, check_output_file
    from relscope.manifest import build_manifest, manifest_beside

    s = settings
    check_output_file(out, (*s.runs, *([s.qrels] if s.qrels else [])))
    runs = [read_run(path) for path in s.runs]
    qrels = read_qrels(s.qrels) if s.qrels else None
    fused = fuse_runs(runs, s.weights, s.norm, names=s.runs)
    rows = []
    if qrels is not None:
        for name, run in [*zip(s.runs, runs), (f"fused ({s.norm}, {list(s.weights)})", fused)]:
            mean, _ = evaluate_run(qrels, run, s.measures, (s.qrels, name))
            rows.append({"run": name, **mean})
    write_run(fused, out, tag=f"relscope-fuse-{s.norm}")
    inputs = {f"run {i + 1}": Path(p) for i, p in enumerate(s.runs)} | ({"qrels": Path(s.qrels)} if s.qrels else {})
    atomic_write_json(manifest_beside(out), build_manifest(to_mapping(s), inputs, evaluation=rows))
    return rows
