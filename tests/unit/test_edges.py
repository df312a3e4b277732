"""Edge attribution and circuits on tiny models of every family: the graph's edges, the exact ablation's two ends
(every edge kept is the clean run; every edge given its corrupted value is the corrupted run), and the edge score as
the derivative of moving one edge from its corrupted towards its clean value (finite differences)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_patching

from relscope.analysis.patching.edges import EdgeGraph, Node, top_edges

FAMILIES = ["llama", "gpt_neox", "phi3", "gemma3_text"]


def _setup(family: str, tiny_groups, dtype=torch.float32):
    engine, pairs = tiny_patching(family, tiny_groups, dtype)
    return engine, EdgeGraph(engine.model, engine.spec), pairs


def test_the_graph_follows_the_residual_stream():
    from relscope.analysis.patching.edges import _feeds

    assert _feeds(Node("head", 2, 0), Node("mlp_in", 2), parallel=False)
    assert not _feeds(Node("head", 2, 0), Node("mlp_in", 2), parallel=True)  # GPT-NeoX's parallel blocks
    assert not _feeds(Node("mlp", 2), Node("attn_in", 2), parallel=False)
    assert not _feeds(Node("head", 2, 1), Node("attn_in", 2), parallel=False)
    assert _feeds(Node("mlp", 2), Node("attn_in", 3), parallel=False)
    assert _feeds(Node("emb", -1), Node("attn_in", 0), parallel=False) and _feeds(Node("mlp", 2), Node("logits", 3),
                                                                                 parallel=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_every_edge_is_the_clean_run_and_cutting_every_edge_the_corrupted_one(family, tiny_groups):
    engine, graph, pairs = _setup(family, tiny_groups)
    assert graph.per_head == (family != "gemma3_text")  # Gemma's attention output is normed before it is added
    shape = graph.edges.shape
    for pair in pairs:
        corrupted = graph.writer_values(engine, engine.ids(pair.corrupted))
        kept = np.stack([np.ones(shape, bool), np.zeros(shape, bool)])
        alone = graph.run_with_edges(engine, engine.ids(pair.clean), corrupted, kept[:1])
        assert alone[0] == engine.logit_diffs(engine.ids(pair.clean))[0]  # nothing touched: bit for bit
        lds = graph.run_with_edges(engine, engine.ids(pair.clean), corrupted, kept)  # two rows: other kernels
        assert lds[0] == pytest.approx(alone[0], abs=1e-6)
        assert lds[1] == pytest.approx(engine.logit_diffs(engine.ids(pair.corrupted))[0], abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_edge_score_is_the_derivative_of_moving_that_edge_alone(family, tiny_groups):
    """One step (EAP): s(u -> v) = d/de LD(corrupted run, reader v's input + e (w_u clean - w_u corrupted)), by
    central differences (Hugging Face's norms compute in float32 even in a float64 model: a smaller step drowns)."""
    engine, graph, pairs = _setup(family, tiny_groups, torch.float64)
    pair = pairs[0]
    scores, _, _ = graph.scores(engine, pair, steps=1)
    clean = graph.writer_values(engine, engine.ids(pair.clean))
    corrupted = graph.writer_values(engine, engine.ids(pair.corrupted))
    chosen = np.argwhere(top_edges(scores, graph.edges, 6))
    eps = 1e-2
    for u, v in chosen:
        kept = graph.edges.copy()
        kept[u, v] = False
        moved = []
        for sign in (1, -1):
            values = corrupted.clone()
            values[u] = corrupted[u] + sign * eps * (clean[u] - corrupted[u])
            moved.append(graph.run_with_edges(engine, engine.ids(pair.corrupted), values, kept[None])[0])
        assert (moved[0] - moved[1]) / (2 * eps) == pytest.approx(scores[u, v], rel=1e-3, abs=1e-7), (
            graph.writers[u].name, graph.readers[v].name)


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_circuit_command_writes_the_curve_from_none_to_the_whole_model(ablation, tiny_family_dir, tiny_groups,
                                                                       tmp_path, capsys):
    import csv
    import json

    from relscope.cli import main

    out = tmp_path / "circuit"
    assert main(["circuit", str(tiny_family_dir("llama")), "--groups", str(tiny_groups), "--max-pairs", "3",
                 "--min-gap", "0", "--ig-steps", "2", "--ablation", ablation, "--target", "0.5", "--out", str(out),
                 "--quiet"]) == 0
    assert "edges recover 50%-150% of the logit difference" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    curve = [row["recovered"] for row in manifest["curve"]]
    assert curve[0] == 0.0 and curve[-1] == 1.0  # the normalisation's own ends
    assert manifest["ld_all"] == pytest.approx(manifest["ld_clean"], abs=1e-5)  # every edge kept: the clean run
    if ablation == "corrupted":  # every edge given its corrupted value: the corrupted run
        assert manifest["ld_none"] == pytest.approx(manifest["ld_corrupted"], abs=1e-5)
    edges = list(csv.DictReader((out / "edges.csv").open()))
    assert len(edges) == manifest["edges"] and (out / "circuit.png").exists() and (out / "faithfulness.png").exists()
    chosen = list(csv.DictReader((out / "circuit.csv").open()))
    assert len(chosen) == manifest["circuit_edges"] and chosen == edges[:len(chosen)]  # the top edges


def test_recovered_is_nan_when_the_whole_model_barely_differs_from_the_ablated_one():
    from relscope.analysis.patching.edges import recovered

    lds = np.array([[0.0, 0.5, 1.0], [0.2, 0.6, 1.4]])  # (pairs, circuits): none, half, all
    np.testing.assert_allclose(recovered(lds, floor=0.1), [0.0, 0.45 / 1.1, 1.0])
    assert np.isnan(recovered(lds * 0.05, floor=0.1)).all()  # a whole-model gap of 0.06 under the floor


def test_a_run_without_a_circuit_removes_an_earlier_runs_circuit(tiny_groups, tmp_path):
    from relscope.analysis.patching.circuit import CIRCUIT, _write
    from relscope.analysis.patching.settings import CircuitSettings

    engine, graph, _ = _setup("llama", tiny_groups)
    for suffix in (".csv", ".md", ".png"):
        (tmp_path / f"{CIRCUIT}{suffix}").write_text("an earlier run's")
    scores = np.where(graph.edges, 1.0, 0.0)
    _write(tmp_path, graph, scores, scores, [{"edges": 0, "share of edges": 0.0, "recovered": float("nan")},
                                             {"edges": 1, "share of edges": 1.0, "recovered": float("nan")}],
           None, "tiny", CircuitSettings(), 2)
    assert not list(tmp_path.glob(f"{CIRCUIT}.*")) and (tmp_path / "edges.csv").exists()


def test_the_oriented_curve_runs_from_0_to_1_under_interchange_ablation(tiny_family_dir, tiny_groups, tmp_path):
    """Interchange ablation with every edge cut is each pair's corrupted run: oriented per pair (clean the higher),
    the curve starts at 0 and ends at 1 whatever the signs of the pairs' gaps."""
    import json

    from relscope.cli import main

    out = tmp_path / "c"
    assert main(["circuit", str(tiny_family_dir("gpt_neox")), "--groups", str(tiny_groups), "--max-pairs", "3",
                 "--min-gap", "0", "--ig-steps", "1", "--ablation", "corrupted", "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    curve = [row["recovered"] for row in manifest["curve"]]
    assert all(np.isfinite(curve)) and curve[0] == 0.0 and curve[-1] == 1.0
