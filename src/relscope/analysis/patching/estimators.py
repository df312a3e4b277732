"""One entry point to every attribution estimator (sites.ESTIMATORS), for the patch job and the benchmark alike."""

from __future__ import annotations

from collections.abc import Sequence

from relscope.analysis.patching.atp import attribution_patching
from relscope.analysis.patching.engine import PairResult, PatchingEngine
from relscope.analysis.patching.graddrop import grad_drop
from relscope.analysis.patching.ig import DEFAULT_STEPS, integrated_gradients
from relscope.analysis.patching.nearest import nearest_end_patching
from relscope.analysis.patching.pairs import PatchPair
from relscope.analysis.patching.relp import relevance_patching
from relscope.analysis.patching.sites import LRP_RULES, QK_COMPONENTS, QK_ESTIMATORS, Site


def estimate(method: str, engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site],
             ig_steps: int = DEFAULT_STEPS, relp_rules: Sequence[str] = LRP_RULES) -> PairResult:
    """Estimator `method`'s result for one pair: atp, atp-qk, atp-star, relp (with `relp_rules`), ig (`ig_steps`) or
    atp-nearest.
    Query and key sites have a definition in atp (first order), atp-qk and atp-star (the QK fix) only."""
    if method not in QK_ESTIMATORS and any(s.component in QK_COMPONENTS for s in sites):
        raise ValueError(f"{method} has no estimate for query or key sites; use {' or '.join(QK_ESTIMATORS)}")
    if method == "ig":
        return integrated_gradients(engine, pair, sites, ig_steps)
    if method == "relp":
        return relevance_patching(engine, pair, sites, relp_rules)
    if method == "atp-star":
        return grad_drop(engine, pair, sites)
    if method == "atp":
        return attribution_patching(engine, pair, sites)
    if method == "atp-nearest":
        return nearest_end_patching(engine, pair, sites)
    if method == "atp-qk":
        return attribution_patching(engine, pair, sites, qk_fix=True)
    raise ValueError(f"unknown attribution estimator {method!r}")
