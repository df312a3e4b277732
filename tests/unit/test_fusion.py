"""Run fusion: each normalisation against a hand computation, and the guards."""

from __future__ import annotations

import pytest

from relscope.data.types import ScoredDoc
from relscope.errors import ConfigError
from relscope.evaluation.fusion import fuse_runs

A = {"1": [ScoredDoc("a", 10.0), ScoredDoc("b", 8.0), ScoredDoc("c", 0.0)]}
B = {"1": [ScoredDoc("c", 3.0), ScoredDoc("b", 2.0), ScoredDoc("a", 1.0), ScoredDoc("x", 9.0)]}


def _scores(run):
    return {d.pid: d.score for d in run["1"]}


def test_zscore_interpolation_by_hand():
    fused = _scores(fuse_runs([A, B], [0.5, 0.5], "zscore"))
    a = [10.0, 8.0, 0.0]
    b = [1.0, 2.0, 3.0]  # a, b, c in B
    za = [(v - sum(a) / 3) / (sum((x - sum(a) / 3) ** 2 for x in a) / 3) ** 0.5 for v in a]
    zb = [(v - 2.0) / (2 / 3) ** 0.5 for v in b]
    assert fused == pytest.approx({"a": (za[0] + zb[0]) / 2, "b": (za[1] + zb[1]) / 2, "c": (za[2] + zb[2]) / 2})
    assert "x" not in fused  # only passages in every run are fused


def test_rrf_uses_ranks_only():
    fused = _scores(fuse_runs([A, B], [1.0, 1.0], "rrf"))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(2 / 62)


def test_weight_one_zero_keeps_the_first_ranking():
    fused = fuse_runs([A, B], [1.0, 0.0], "minmax")
    assert [d.pid for d in fused["1"]] == ["a", "b", "c"]


@pytest.mark.parametrize("runs,weights,norm,words", [
    ([A], [1.0], "zscore", "two or more runs"),
    ([A, B], [1.0], "zscore", "one weight each"),
    ([A, B], [1.0, 1.0], "softmax", "unknown"),
])
def test_bad_fusion_requests(runs, weights, norm, words):
    with pytest.raises(ConfigError, match=words):
        fuse_runs(runs, weights, norm)
