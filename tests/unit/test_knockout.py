"""Knockouts: ablating nothing or a head's own value changes nothing, batched ablation through the Scorer (either
padding side) equals one prompt at a time, zeroing every head equals removing the attention output, the head sets,
the bootstrap interval, and the command end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_patching import FAMILIES, _setup

from relscope.analysis.intervals import relative_drop_ci
from relscope.analysis.knockout import HeadAblation, head_sets, reference_means
from relscope.analysis.patching.hooks import Edit, patching
from relscope.models.scoring import Scorer, ScoringOptions


def _scores(engine, loaded, prompts, ablation=None, padding="right"):
    scorer = Scorer(loaded.model, loaded.spec, engine.head, loaded.tokenizer.pad_token_id,
                    ScoringOptions(prefix_cache=False, padding_side=padding), progress=False)
    if ablation is None:
        return scorer.score(prompts)
    scorer.on_batch = ablation.set_batch
    with ablation.active():
        return scorer.score(prompts)


@pytest.mark.parametrize("family", FAMILIES)
def test_ablating_a_head_with_its_own_value_changes_nothing(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    prompt = pairs[0].clean
    means = reference_means(engine, [prompt], [1], ["last"])  # one position: the mean is the value itself
    ablation = HeadAblation.at(loaded.model, loaded.spec, [(1, 0), (1, engine.n_heads - 1)], ["last"], engine.head_dim,
                            means)
    assert _scores(engine, loaded, [prompt], ablation) == pytest.approx(_scores(engine, loaded, [prompt]), abs=1e-5)
    nothing = HeadAblation.at(loaded.model, loaded.spec, [], ["all"], engine.head_dim, None)
    assert _scores(engine, loaded, [prompt], nothing) == pytest.approx(_scores(engine, loaded, [prompt]), abs=1e-6)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_batched_ablation_equals_one_prompt_at_a_time(padding, tiny_groups):
    from relscope.analysis.examples import labelled_prompts
    from relscope.data.groups import read_groups
    from relscope.prompts import PromptBuilder, get_template

    loaded, engine, pairs, _ = _setup("llama", tiny_groups)
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no"), 128)
    prompts = [e.prompt for e in labelled_prompts(read_groups(tiny_groups), builder, 4)]
    assert len({len(p) for p in prompts}) > 1  # padding is exercised
    means = reference_means(engine, prompts, [0, 2], ["document", "query"])
    ablation = HeadAblation.at(loaded.model, loaded.spec, [(0, 1), (2, 0), (2, 3)], ["document", "query"],
                            engine.head_dim, means)
    batched = _scores(engine, loaded, prompts, ablation, padding)
    alone = np.array([_scores(engine, loaded, [p], ablation)[0] for p in prompts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.abs(batched - _scores(engine, loaded, prompts)).max() > 1e-6  # the ablation does something


@pytest.mark.parametrize("family", FAMILIES)
def test_zeroing_every_head_removes_the_attention_output(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    prompt = pairs[0].clean
    ablation = HeadAblation.at(loaded.model, loaded.spec, [(1, h) for h in range(engine.n_heads)], ["all"],
                            engine.head_dim, None)
    o_proj = engine.spec.projection_of(engine.model, 1, "o")
    bias = o_proj.bias.detach() if o_proj.bias is not None else torch.zeros(o_proj.out_features)
    where = torch.arange(len(prompt))
    edit = Edit(0, where, bias.expand(len(prompt), -1))
    with patching(engine.model, engine.spec, {("attn", 1): [edit]}):
        expected = engine.logit_diffs(engine.ids(prompt))[0]
    assert _scores(engine, loaded, [prompt], ablation)[0] == pytest.approx(expected, abs=1e-5)


def test_head_sets_are_table_1_of_study_002(tmp_path):
    """Doc-N, Query-N, Inst-N, Last-N: the N heads of highest (signed) mean IE at that group, each ablated at its own
    positions; Mixed: their union, each at its own set's positions; Random: as many heads at every position."""
    ie = np.zeros((2, 4, 3, 2))  # pairs, groups, layers, heads
    ie[:, 0, 2, 1] = -5.0  # document: layer 2 head 1, negative but the largest in magnitude
    ie[:, 0, 0, 0] = 1.0  # document: the highest effect
    ie[:, 3, 1, 0] = 3.0  # last: layer 1 head 0
    path = tmp_path / "ie_heads.npz"
    np.savez(path, ie=ie, groups=np.array(["document", "query", "instruction", "last"]), layers=np.array([0, 1, 2]))
    sets = {s.name: s for s in head_sets(str(path), 1, random_draws=2)}
    assert sets["Doc-1"].targets == ((0, 0, "document"),) and sets["Last-1"].targets == ((1, 0, "last"),)
    assert "Query-1" not in sets and "Inst-1" not in sets  # no effect there: no top heads
    assert sets["Mixed-2"].targets == ((0, 0, "document"), (1, 0, "last"))  # each at its own positions
    random = [s for name, s in sets.items() if name.startswith("Random-2 #")]
    assert len(random) == 2 and all(len(s.heads) == 2 and {g for *_, g in s.targets} == {"all"} for s in random)
    by_size = {s.name: s for s in head_sets(str(path), 1, random_draws=0, by_magnitude=True)}
    assert by_size["Doc-1"].targets == ((2, 1, "document"),)  # |IE| ranks the negative head first
    everywhere = {s.name: s for s in head_sets(str(path), 1, random_draws=0, positions=("all",))}
    assert everywhere["Doc-1"].targets == ((0, 0, "all"),)


def test_the_default_set_size_is_the_studys_share_of_heads():
    from relscope.analysis.knockout import study_size

    assert study_size(32 * 32) == 20  # Llama-3.1-8B: 002's N
    assert study_size(30 * 9) == 5 and study_size(2 * 4) == 1  # SmolLM2-135M; a tiny model


def test_pair_accuracy_is_the_share_of_pairs_in_order_and_ignores_the_threshold():
    from relscope.analysis.knockout import _f1, _judgments, _pair_accuracy

    labels = np.array([1, 0, 1, 0, 1, 0, 0])
    qids = ["a", "a", "b", "b", "c", "c", "c"]
    every = np.arange(3)
    right = _judgments(np.array([2.0, 1.0, 0.5, 0.2, 3.0, -1.0, 3.5]), labels, qids)  # all say yes but one
    assert _pair_accuracy(right, every) == pytest.approx((1 + 1 + 0.5) / 3)
    shifted = _judgments(np.array([2.0, 1.0, 0.5, 0.2, 3.0, -1.0, 3.5]) + 10, labels, qids)  # all say yes
    assert _pair_accuracy(shifted, every) == _pair_accuracy(right, every)
    assert _f1(shifted, every) == pytest.approx(0.6)  # precision 3/7, recall 1: F1 saturates at 2P/(P+1)


def test_relative_drop_interval_contains_the_point_and_is_paired():
    full = np.array([0.5, 0.6, 0.7, 0.8, 0.4, 0.9])
    half = full / 2

    def mean(values, index):
        return float(np.mean(values[index]))

    change, low, high = relative_drop_ci(full, half, mean, resamples=200)
    assert change == pytest.approx(-0.5) and low == pytest.approx(-0.5) and high == pytest.approx(-0.5)
    noisy = full * np.array([0.5, 1.0, 0.7, 1.1, 0.9, 0.6])
    change, low, high = relative_drop_ci(full, noisy, mean, resamples=200)
    assert low <= change <= high and low < high
    never = np.zeros_like(full)  # the full model's statistic is 0: a relative change is undefined, not an error
    assert all(np.isnan(relative_drop_ci(never, noisy, mean, resamples=50)))
    sparse = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # most resamples miss the one non-zero query
    change, low, high = relative_drop_ci(sparse, sparse / 2, mean, resamples=200)
    assert change == low == high == pytest.approx(-0.5)


def test_knockout_command_reports_f1_and_ndcg_changes(tiny_family_dir, tiny_groups, trec_dir, tmp_path, capsys):
    from relscope.cli import main

    model = str(tiny_family_dir("llama"))
    assert main(["patch", model, "--groups", str(tiny_groups), "--max-pairs", "2", "--min-gap", "0", "--components",
                 "mlp", "--heads", "--head-positions", "document", "query", "instruction", "last", "--out",
                 str(tmp_path / "patch"), "--quiet"]) == 0
    out = tmp_path / "knockout"
    assert main(["knockout", model, "--ie-heads", str(tmp_path / "patch" / "ie_heads.npz"), "--groups",
                 str(tiny_groups), "--size", "2", "--random-draws", "1", "--data", str(trec_dir), "--top-k", "3",
                 "--out", str(out)]) == 0
    table = (out / "knockout.md").read_text()
    for name in ("full model", "Mixed-", "Random-", "nDCG@10 change", "pair accuracy change"):
        assert name in table
    assert any(f"{label}-2 " in table for label in ("Doc", "Query", "Inst", "Last"))
    assert (out / "knockout.png").is_file()
    assert main(["knockout", model, "--ie-heads", str(tmp_path / "none.npz"), "--out", str(out)]) == 2


def test_pairwise_knockout_scores_judgments_of_both_orders_and_reranks(tiny_family_dir, tiny_groups, trec_dir,
                                                                        tmp_path):
    from relscope.cli import main

    model = str(tiny_family_dir("llama"))
    assert main(["patch", model, "--groups", str(tiny_groups), "--template", "pairwise", "--max-pairs", "2",
                 "--min-gap", "0", "--components", "mlp", "--heads", "--head-positions", "document", "last",
                 "--out", str(tmp_path / "patch"), "--quiet"]) == 0
    out = tmp_path / "knockout"
    assert main(["knockout", model, "--template", "pairwise", "--ie-heads", str(tmp_path / "patch" / "ie_heads.npz"),
                 "--groups", str(tiny_groups), "--max-groups", "4", "--size", "2", "--random-draws", "1",
                 "--data", str(trec_dir), "--top-k", "3", "--out", str(out)]) == 0
    rows = {r["head set"]: r for r in __import__("csv").DictReader((out / "knockout.csv").open())}
    tops = {name for name in rows if name.split("-")[0] in ("Doc", "Last")}
    assert tops and set(rows) == {"full model", *tops, f"Mixed-{2 * len(tops)}", f"Random-{2 * len(tops)} #1"}
    assert 0.0 <= float(rows["full model"]["pair accuracy"]) <= 1.0
    # The dev run is reranked pairwise (every ordered pair of the top 3) under each knockout.
    assert 0.0 <= float(rows["full model"]["nDCG@10"]) <= 1.0 and float(rows["full model"]["nDCG@10 change"]) == 0
    assert "8 prompts" in (out / "knockout.md").read_text()  # 4 groups, each in both orders


def test_knockout_reranks_the_dev_run_in_the_layout_its_heads_were_found_in(tiny_family_dir, tiny_groups, trec_dir,
                                                                             tmp_path, monkeypatch):
    """The dev run is reranked with the knockout's own prompts (study 002's layout: document, query, instruction, the
    layout the heads were found in); it was reranked in the template's default layout (query first)."""
    import relscope.evaluation.rerank as rerank_module
    from relscope.analysis.patching.settings import STUDY_LAYOUT
    from relscope.cli import main

    model = str(tiny_family_dir("llama"))
    assert main(["patch", model, "--groups", str(tiny_groups), "--max-pairs", "2", "--min-gap", "0", "--components",
                 "mlp", "--heads", "--head-positions", "document", "last", "--out", str(tmp_path / "patch"),
                 "--quiet"]) == 0
    reranked, original = [], rerank_module.rerank

    def recording(reranker, dataset, top_k):
        groups = [span.group for span in reranker.builder.build("a query", ["a passage"]).spans]
        reranked.append(groups.index("document") < groups.index("query"))
        return original(reranker, dataset, top_k)

    monkeypatch.setattr(rerank_module, "rerank", recording)
    assert main(["knockout", model, "--ie-heads", str(tmp_path / "patch" / "ie_heads.npz"), "--groups",
                 str(tiny_groups), "--size", "2", "--random-draws", "1", "--data", str(trec_dir), "--top-k", "3",
                 "--out", str(tmp_path / "knockout")]) == 0
    assert reranked and all(reranked)  # the document comes before the query, as in STUDY_LAYOUT
    assert STUDY_LAYOUT.startswith("document")
