"""Paired bootstrap intervals over queries for a relative change between two conditions of one model (an ablation
against the full model, a variant against another), shared by the knockout and anatomy jobs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def relative_drop_ci(full: Sequence[Any], ablated: Sequence[Any],
                     statistic: Callable[[Sequence[Any], np.ndarray], float], resamples: int = 1000,
                     seed: int = 0) -> tuple[float, float, float]:
    """The relative change statistic(ablated)/statistic(full) - 1 over queries, and its 95% percentile bootstrap
    interval (queries resampled, the same resample for both: paired).

    Undefined (NaN) where the full model's statistic is 0 — F1 of a judge that says "no" to everything — and a
    resample whose full statistic is 0 is left out of the interval. scipy.stats.bootstrap cannot leave a
    resample out, so the resampling is done here."""
    def change(index: np.ndarray) -> float:
        base = statistic(full, index)
        return statistic(ablated, index) / base - 1.0 if base else float("nan")

    point = change(np.arange(len(full)))
    if np.isnan(point):
        return point, point, point
    rng = np.random.default_rng(seed)
    draws = np.array([change(rng.integers(0, len(full), len(full))) for _ in range(resamples)])
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return float(point), float(low), float(high)


def mean_of(per_query: Sequence[float] | np.ndarray, index: np.ndarray) -> float:
    """The mean of the per-query values at `index` (a bootstrap resample, or every query)."""
    return float(np.mean(np.asarray(per_query, dtype=float)[index]))


def difference_ci(first: Sequence[float], second: Sequence[float], resamples: int = 1000,
                  seed: int = 0) -> tuple[float, float, float]:
    """mean(first - second) over queries (the two measured on the same queries, in the same order) and its 95%
    percentile bootstrap interval, queries resampled in pairs."""
    gaps = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    rng = np.random.default_rng(seed)
    draws = np.array([gaps[rng.integers(0, len(gaps), len(gaps))].mean() for _ in range(resamples)])
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(gaps.mean()), float(low), float(high)
