"""Mechanism comparison: RBO equal to the reference implementation's values, rankings from patch runs, and the
command's checks."""

from __future__ import annotations

import numpy as np
import pytest

from relscope.analysis.compare import Ranking, compare_rankings, load_ranking, rank_biased_overlap
from relscope.errors import ConfigError


@pytest.mark.parametrize("a, b, p, expected", [
    ("abcdef", "abcdef", 0.9, 1.0),
    ("abcdef", "fedcba", 0.9, 0.679428),  # the PyPI rbo package 0.1.3, rbo_ext
    ("abcdef", "badcfe", 0.9, 0.859878),
    ("abcdefghij", "jcaebdfhgi", 0.8, 0.5023656878730159),
])
def test_rbo_matches_the_reference_implementation(a, b, p, expected):
    assert rank_biased_overlap(list(a), list(b), p) == pytest.approx(expected, abs=1e-6)


def test_rbo_is_top_heavy_and_rejects_different_items():
    swapped_top = rank_biased_overlap(list("bacdef"), list("abcdef"), 0.5)
    swapped_bottom = rank_biased_overlap(list("abcdfe"), list("abcdef"), 0.5)
    assert swapped_top < swapped_bottom < 1.0
    with pytest.raises(ConfigError):
        rank_biased_overlap(list("abc"), list("abd"), 0.9)


def test_compare_reports_order_and_magnitude_apart():
    labels = [f"c{i}" for i in range(10)]
    a = Ranking(labels, np.linspace(1.0, 0.1, 10))
    b = Ranking(labels, np.linspace(1.0, 0.1, 10) * 0.01)  # same order, a hundredth of the effect
    summary = compare_rankings(a, b, p=0.9, top=3)
    assert summary["RBO (p=0.9)"] == pytest.approx(1.0) and summary["Spearman rho"] == pytest.approx(1.0)
    assert summary["mean |IE| top-3 A"] == pytest.approx(100 * summary["mean |IE| top-3 B"])
    with pytest.raises(ConfigError, match="different components"):
        compare_rankings(a, Ranking(labels[::-1], a.values), 0.9, 3)


def test_compare_command_on_pointwise_and_pairwise_patch_runs(tiny_family_dir, tiny_groups, tmp_path, capsys):
    from relscope.cli import main

    model = str(tiny_family_dir("llama"))
    for template in ("yes_no", "pairwise"):
        assert main(["patch", model, "--groups", str(tiny_groups), "--template", template, "--max-pairs", "2",
                     "--min-gap", "0", "--components", "attn", "mlp", "--heads", "--out",
                     str(tmp_path / template), "--quiet"]) == 0
    out = tmp_path / "compare"
    assert main(["compare", str(tmp_path / "yes_no"), str(tmp_path / "pairwise"), "--heads", "--top", "5",
                 "--out", str(out)]) == 0
    assert "RBO (p=0.9)" in capsys.readouterr().out
    assert (out / "summary.md").is_file() and (out / "top.md").is_file()
    ranking = load_ranking(tmp_path / "yes_no", depth_bins=2)
    assert len(ranking.labels) == 2 * 2 * 4  # components x depth bins x position groups ('all' left out)
    assert not any(label.endswith(" all") for label in ranking.labels)
    assert not any(label.startswith("all ") for label in load_ranking(tmp_path / "yes_no", heads=True).labels)
    assert main(["compare", str(tmp_path / "yes_no"), str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert main(["compare", str(tmp_path / "yes_no"), str(tmp_path / "pairwise"), "--p", "1.5", "--out",
                 str(out)]) == 2
