"""Activation patching: the invariants (no hooks = the plain model; clean into clean = no change; the whole residual
stream at layer 0 = IE 1) and the batched engine equal to one naive forward per patch, on several families."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_loaded

from relscope.analysis.patching.engine import PairResult, PatchingEngine, indirect_effects
from relscope.analysis.patching.settings import STUDY_LAYOUT
from relscope.analysis.patching.sites import Site, all_sites
from relscope.analysis.patching.hooks import Edit, patching
from relscope.analysis.patching.pairs import PatchPair, build_pairs, same_layout
from relscope.data.groups import read_groups
from relscope.models.heads import build_head
from relscope.prompts import PromptBuilder, get_template

FAMILIES = ["llama", "gpt_neox", "phi3", "gemma3_text"]


def _setup(family: str, tiny_groups, template: str = "yes_no"):
    loaded = tiny_loaded(family)
    builder = PromptBuilder(loaded.tokenizer, get_template(template), 128)
    head = build_head("ab" if template == "pairwise" else "yes_no", loaded.model, builder)
    pairs, report = build_pairs(read_groups(tiny_groups), builder, max_pairs=3)
    return loaded, PatchingEngine(loaded.model, loaded.spec, head, batch_size=7), pairs, report


@pytest.mark.parametrize("template", ["yes_no", "pairwise"])
def test_pairs_line_up_token_for_token(template, tiny_groups):
    _, _, pairs, report = _setup("llama", tiny_groups, template)
    assert report.pairs == len(pairs) == 3
    for pair in pairs:
        assert same_layout(pair.clean, pair.corrupted)
        assert pair.clean.input_ids != pair.corrupted.input_ids
        if template == "pairwise":  # the same passages, swapped
            a, b = pair.clean.positions("document"), pair.corrupted.positions("document")
            assert sorted(pair.clean.input_ids[i] for i in a) == sorted(pair.corrupted.input_ids[i] for i in b)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_edits_and_removed_hooks_leave_the_model_unchanged(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    ids = torch.tensor([pairs[0].corrupted.input_ids])
    with torch.no_grad():
        direct = engine.head(engine.backbone(input_ids=ids).last_hidden_state[:, -1]).numpy()
    assert np.array_equal(engine.logit_diffs(ids), direct)
    noise = Edit(0, torch.tensor([0, 1]), torch.randn(2, loaded.model.config.hidden_size))
    with patching(engine.model, engine.spec, {("mlp", 0): [noise]}):
        pass
    assert np.array_equal(engine.logit_diffs(ids), direct)


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_clean_into_clean_changes_nothing(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    pair = PatchPair(pairs[0].qid, pairs[0].clean, pairs[0].clean)
    result = engine.sweep(pair, all_sites(loaded.model.config.num_hidden_layers))
    np.testing.assert_allclose(result.patched, result.clean, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_whole_residual_stream_patched_gives_ie_one(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    last = loaded.model.config.num_hidden_layers - 1
    result = engine.sweep(pairs[0], [Site("resid_pre", 0, "all"), Site("resid_post", last, "all")])
    np.testing.assert_allclose(result.indirect_effects(), 1.0, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_batched_sweep_equals_one_naive_forward_per_patch(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    sites = all_sites(loaded.model.config.num_hidden_layers)
    for pair in pairs[:2]:
        result = engine.sweep(pair, sites)
        naive = np.array([engine.naive(pair, site) for site in sites])
        assert np.max(np.abs(result.patched - naive)) <= 1e-5
        if abs(result.gap) >= 0.05:
            assert np.max(np.abs(result.indirect_effects() - (naive - result.corrupted) / result.gap)) <= 1e-4


def test_pairs_with_a_small_gap_are_excluded_and_counted():
    results = [PairResult("a", 2.0, 0.0, np.array([1.0, 2.0])), PairResult("b", 0.01, 0.0, np.array([0.0, 0.0]))]
    ie, excluded = indirect_effects(results, min_gap=0.1)
    assert excluded == ["b"] and ie.tolist() == [[0.5, 1.0]]


def test_patch_command_writes_the_ie_grid_equal_to_the_engine(tiny_family_dir, tiny_groups, tmp_path, capsys):
    from relscope.cli import main
    from relscope.models.load import load_model

    model = str(tiny_family_dir("llama"))
    out = tmp_path / "patch"
    assert main(["patch", model, "--groups", str(tiny_groups), "--max-pairs", "2", "--min-gap", "0",
                 "--components", "resid_pre", "mlp", "--heads", "--attribution", "atp", "--validate", "--out",
                 str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for kind in ("resid", "mlp", "head"):  # one agreement line per site type patched
        assert f"atp vs exact, {kind} (" in printed
    assert np.load(out / "ie_atp.npz")["ie"].shape == (2, 2, 3, 5)
    assert str(np.load(out / "ie_atp.npz")["method"]) == "atp"
    assert np.load(out / "ie_heads_atp.npz")["ie"].shape == np.load(out / "ie_heads.npz")["ie"].shape
    assert (out / "validation.md").exists() and (out / "validation_atp.png").exists()
    saved = np.load(out / "ie.npz")
    assert str(saved["method"]) == "exact"
    assert saved["ie"].shape == (2, 2, 3, 5)  # pairs, components, layers, position groups
    loaded = load_model(model)
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no", STUDY_LAYOUT), 256)  # the command's default
    pairs, _ = build_pairs(read_groups(tiny_groups), builder, max_pairs=2)
    engine = PatchingEngine(loaded.model, loaded.spec, build_head("yes_no", loaded.model, builder))
    direct = engine.sweep(pairs[1], [Site("mlp", 2, "last")]).indirect_effects()[0]
    assert saved["ie"][1, 1, 2, 3] == pytest.approx(direct, abs=1e-5)
    np.testing.assert_allclose(saved["ie"][:, 0, 0, 4], 1.0, atol=1e-4)  # resid_pre 0, all positions
    heads = np.load(out / "ie_heads.npz")["ie"]
    assert heads.shape == (2, 3, 3, engine.n_heads)  # pairs, groups (last, query, all), layers, heads
    direct_head = engine.sweep(pairs[0], [Site("z", 1, "query", 2)]).indirect_effects()[0]
    assert heads[0, 1, 1, 2] == pytest.approx(direct_head, abs=1e-5)
    for name in ("ie_resid_pre.png", "ie_mlp.png", "top_sites.md", "ie_mean.csv", "manifest.json",
                 "ie_heads_last.png"):
        assert (out / name).is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_per_head_patching_equals_naive_and_all_heads_equal_the_whole_block(family, tiny_groups):
    from relscope.analysis.patching.sites import head_sites

    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    sites = head_sites(loaded.model.config.num_hidden_layers, engine.n_heads)
    result = engine.sweep(pairs[0], sites)
    naive = np.array([engine.naive(pairs[0], s) for s in sites[:: max(1, len(sites) // 12)]])
    np.testing.assert_allclose(result.patched[:: max(1, len(sites) // 12)], naive, atol=1e-5)
    # every head of layer 1 at all positions = the attention block's input to o_proj, hence its whole output
    every_head = engine.sweep(pairs[0], [Site("z", 1, "all")]).patched[0]
    block = engine.sweep(pairs[0], [Site("attn", 1, "all")]).patched[0]
    assert every_head == pytest.approx(block, abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("template", ["yes_no", "pairwise"])
def test_the_fast_path_equals_the_naive_one_for_every_site_and_head(family, template, tiny_groups):
    """Layers >= l only, positions >= p only, earlier keys/values from the cache: max |delta IE| <= 1e-4."""
    from relscope.analysis.patching.sites import head_sites
    from relscope.analysis.patching.fast import FastPatcher

    loaded, engine, pairs, _ = _setup(family, tiny_groups, template)
    sites = all_sites(loaded.model.config.num_hidden_layers) + head_sites(loaded.model.config.num_hidden_layers,
                                                                          engine.n_heads)
    for pair in pairs[:2]:
        fast = FastPatcher(engine).sweep(pair, sites)
        slow = engine.sweep(pair, sites)
        assert fast.clean == slow.clean and fast.corrupted == slow.corrupted
        assert np.max(np.abs(fast.patched - slow.patched)) <= 1e-5  # logit differences: float reordering only
        if abs(slow.gap) >= 0.05:  # IE divides by the gap: below the job's exclusion threshold it amplifies noise
            assert np.max(np.abs(fast.indirect_effects() - slow.indirect_effects())) <= 1e-4


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma3_text"])
def test_the_fast_path_runs_resid_post_and_the_next_resid_pre_once_and_they_are_the_same_patch(family, tiny_groups):
    """resid_post of layer l - 1 and resid_pre of layer l write the same clean tensor into the same stream: the plan
    re-runs one of them, and each run alone gives the same number bit for bit."""
    from relscope.analysis.patching.fast import FastPatcher

    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    depth = loaded.model.config.num_hidden_layers
    sites = all_sites(depth)
    plan = FastPatcher(engine).plan(pairs[0], sites)
    shared = {(sites[i].component, sites[i].layer, sites[i].group): (sites[j].component, sites[j].layer, sites[j].group)
              for i, j in plan.same_as.items()}
    assert shared[("resid_post", 0, "document")] == ("resid_pre", 1, "document")
    assert all(a[0] == "resid_post" and b == ("resid_pre", a[1] + 1, a[2]) for a, b in shared.items())
    assert ("resid_post", depth - 1, "document") not in shared  # the last layer's output has no next layer
    post = FastPatcher(engine).sweep(pairs[0], [Site("resid_post", 1, "document")]).patched[0]
    pre = FastPatcher(engine).sweep(pairs[0], [Site("resid_pre", 2, "document")]).patched[0]
    assert post == pre


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_a_residual_stream_patched_at_every_position_is_the_clean_run_and_is_not_re_run(family, tiny_groups):
    """Patching the whole stream entering (or leaving) a layer makes every later activation the clean run's: the fast
    path returns the clean logit difference itself (before, it re-ran the layers and returned it up to rounding)."""
    from relscope.analysis.patching.fast import FastPatcher

    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    depth = loaded.model.config.num_hidden_layers
    sites = [Site(c, layer, "all") for c in ("resid_pre", "resid_post") for layer in range(depth)]
    sites.append(Site("resid_pre", 1, "document"))  # a partial patch of the stream still re-runs
    plan = FastPatcher(engine).plan(pairs[0], sites)
    assert sorted(plan.clean) == list(range(len(sites) - 1))
    assert [m for members in plan.reruns.values() for m in members] == [len(sites) - 1]
    fast = FastPatcher(engine).sweep(pairs[0], sites)
    assert all(value == fast.clean for value in fast.patched[:-1])
    naive = engine.sweep(pairs[0], sites)  # one full forward a patch: the same numbers up to float reordering
    np.testing.assert_allclose(fast.patched, naive.patched, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_atp_is_the_directional_derivative_of_the_patch(family, tiny_groups):
    """A patch scaled by eps moves LD by eps x the AtP estimate, to first order: checked by finite differences."""
    from relscope.analysis.patching.atp import attribution_patching
    from relscope.analysis.patching.sites import head_sites

    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    pair = pairs[0]
    sites = [Site("resid_pre", 1, "document"), Site("mlp", 2, "last"), Site("attn", 0, "all")]
    sites += head_sites(3, engine.n_heads, ("last",))[:3]
    atp = attribution_patching(engine, pair, sites)
    assert atp.clean == pytest.approx(engine.sweep(pair, sites[:1]).clean, abs=1e-6)
    eps = 1e-2
    for i, site in enumerate(sites):
        clean = engine.activations(pair.clean, [site.key])[site.key]
        corrupted = engine.activations(pair.corrupted, [site.key])[site.key]
        where = torch.tensor(pair.corrupted.positions(site.group))
        mixed = corrupted + eps * (clean - corrupted)
        edit = engine.edit(0, site, where, {site.key: mixed})
        moved = engine.logit_diffs(engine.ids(pair.corrupted), {site.key: [edit]})[0] - atp.corrupted
        assert moved / eps == pytest.approx(atp.patched[i] - atp.corrupted, rel=0.05, abs=1e-4), site


def test_atp_preselects_the_largest_estimates():
    from relscope.analysis.patching.atp import preselect

    sites = [Site("mlp", i, "last") for i in range(4)]
    estimate = PairResult("q", 1.0, 0.0, np.array([0.1, -0.9, 0.5, 0.0]))
    assert preselect(estimate, sites, 2) == [sites[1], sites[2]]


def test_a_rerun_resumes_from_the_pairs_already_done(tiny_family_dir, tiny_groups, tmp_path):
    import json

    from relscope.cli import main

    args = ["patch", str(tiny_family_dir("llama")), "--groups", str(tiny_groups), "--min-gap", "0", "--components",
            "mlp", "--heads", "--attribution", "atp", "--validate", "--out", str(tmp_path / "p"), "--quiet"]
    assert main([*args, "--max-pairs", "2"]) == 0
    first = np.load(tmp_path / "p" / "ie.npz")["ie"]
    assert main([*args, "--max-pairs", "3"]) == 0  # one more pair: only it is computed
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    wider = np.load(tmp_path / "p" / "ie.npz")["ie"]
    np.testing.assert_array_equal(wider[:2], first)
    assert wider.shape[0] == 3
    assert 0 < manifest["forwards"] < 40  # one pair's runs (23 here), not three pairs'
    assert main([*args, "--max-pairs", "3"]) == 0
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["forwards"] == 0
