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


def test_the_fuse_job_writes_its_run_and_a_manifest_beside_it(tmp_path):
    """`fuse` is a job like the others: one settings dataclass, its outputs and a manifest naming its inputs."""
    import json

    from relscope.evaluation.fusion import fuse_job
    from relscope.evaluation.settings import FuseSettings

    (tmp_path / "a.trec").write_text("1 Q0 a 1 2.0 x\n1 Q0 b 2 1.0 x\n")
    (tmp_path / "b.trec").write_text("1 Q0 b 1 2.0 y\n1 Q0 a 2 1.0 y\n")
    (tmp_path / "qrels").write_text("1 0 a 2\n1 0 b 0\n")
    settings = FuseSettings(runs=(str(tmp_path / "a.trec"), str(tmp_path / "b.trec")), weights=(0.75, 0.25),
                            norm="minmax", qrels=str(tmp_path / "qrels"), measures=("nDCG@10",))
    rows = fuse_job(settings, tmp_path / "fused.trec")
    assert [row["run"] for row in rows][-1].startswith("fused (minmax, [0.75, 0.25])")
    assert (tmp_path / "fused.trec").read_text().split("\n")[0].split()[2] == "a"  # 0.75 * 1 beats 0.25 * 1
    manifest = json.loads((tmp_path / "fused.trec.manifest.json").read_text())
    assert manifest["config"]["weights"] == [0.75, 0.25] and manifest["config"]["norm"] == "minmax"
    assert set(manifest["data"]) == {"run 1", "run 2", "qrels"} and manifest["evaluation"] == rows
