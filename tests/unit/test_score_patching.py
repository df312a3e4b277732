"""Attention-score patching: equal to rewriting the head's weights inside the model's own eager attention (an
independent computation), clean into clean changes nothing, and the fast path and AtP agree with the naive one."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from test_patching import FAMILIES, _setup
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from relscope.analysis.patching.engine import PatchPair
from relscope.analysis.patching.sites import Site
from relscope.analysis.patching.scores import SCORE_BLOCKS, record_attention, score_sites, split_block
from relscope.errors import ConfigError

_rewrite: dict = {}


def _rewriting_attention(module, query, key, value, attention_mask, **kwargs):
    """Eager attention with one head's weights on one block replaced, the output recomputed from them."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, weights = eager(module, query, key, value, attention_mask, **kwargs)
    if _rewrite and module.layer_idx == _rewrite["layer"]:
        head, rows, columns = _rewrite["head"], _rewrite["rows"], _rewrite["columns"]
        patched = weights[0, head].clone()
        patched[rows[:, None], columns] = _rewrite["clean"][rows[:, None], columns]
        values = value[0, head // (weights.shape[1] // value.shape[1])]
        output = output.clone()
        output[0, :, head] = (patched @ values).to(output.dtype)
    return output, weights


AttentionInterface.register("test_rewrite", _rewriting_attention)
AttentionMaskInterface.register("test_rewrite", eager_mask)


def _rewritten_logit_diff(engine, pair: PatchPair, site: Site) -> float:
    rows, columns = (torch.tensor(pair.corrupted.positions(g)) for g in split_block(site.group))
    clean = record_attention(engine, pair.clean).weights[site.layer][site.head]
    before = engine.model.config._attn_implementation
    _rewrite.update(layer=site.layer, head=site.head, rows=rows, columns=columns, clean=clean)
    engine.model.set_attn_implementation("test_rewrite")
    try:
        return float(engine.logit_diffs(engine.ids(pair.corrupted))[0])
    finally:
        _rewrite.clear()
        engine.model.set_attn_implementation(before)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_score_patch_equals_rewriting_the_weights_inside_attention(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    depth = loaded.model.config.num_hidden_layers
    sites = [Site("scores", layer, block, head) for layer, block, head in
             [(0, "document>query", 0), (depth - 1, "last>document", engine.n_heads - 1), (1, "last>query", 1)]]
    result = engine.sweep(pairs[0], sites)
    rewritten = np.array([_rewritten_logit_diff(engine, pairs[0], s) for s in sites])
    np.testing.assert_allclose(result.patched, rewritten, atol=1e-5)
    assert np.max(np.abs(result.patched - result.corrupted)) > 1e-6  # the patches do something


@pytest.mark.parametrize("family", FAMILIES)
def test_score_patching_clean_into_clean_changes_nothing(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    pair = PatchPair(pairs[0].qid, pairs[0].clean, pairs[0].clean)
    result = engine.sweep(pair, score_sites(range(loaded.model.config.num_hidden_layers), engine.n_heads))
    np.testing.assert_allclose(result.patched, result.clean, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("template", ["yes_no", "pairwise"])
def test_score_patching_fast_path_equals_the_batched_and_naive_ones(family, template, tiny_groups):
    from relscope.analysis.patching.fast import FastPatcher

    loaded, engine, pairs, _ = _setup(family, tiny_groups, template)
    sites = score_sites(range(loaded.model.config.num_hidden_layers), engine.n_heads)
    fast = FastPatcher(engine).sweep(pairs[0], sites)
    batched = engine.sweep(pairs[0], sites)
    assert np.max(np.abs(fast.patched - batched.patched)) <= 1e-5
    naive = np.array([engine.naive(pairs[0], s) for s in sites[:: max(1, len(sites) // 8)]])
    np.testing.assert_allclose(batched.patched[:: max(1, len(sites) // 8)], naive, atol=1e-5)


def test_atp_estimates_a_score_patch_by_its_directional_derivative(tiny_groups):
    from relscope.analysis.patching.atp import attribution_patching

    loaded, engine, pairs, _ = _setup("llama", tiny_groups)
    pair, site = pairs[0], Site("scores", 1, "last>document", 1)
    change = engine.attention_changes(pair, [site])[site]
    atp = attribution_patching(engine, pair, [site])
    eps = 1e-2
    where = torch.tensor(pair.corrupted.positions(site.rows))
    edit = engine.edit(0, site, where, {site: eps * change})
    moved = engine.logit_diffs(engine.ids(pair.corrupted), {site.key: [edit]})[0] - atp.corrupted
    assert moved / eps == pytest.approx(atp.patched[0] - atp.corrupted, rel=0.05, abs=1e-4)


def test_a_malformed_block_is_named():
    with pytest.raises(ConfigError, match="rows>columns"):
        score_sites([0], 2, ["document"])
    assert len(score_sites([0, 1], 3)) == 2 * 3 * len(SCORE_BLOCKS)


def test_patch_command_writes_score_and_inject_outputs(tiny_family_dir, tiny_groups, tmp_path):
    from relscope.analysis.patching.engine import PatchingEngine
    from relscope.analysis.patching.pairs import build_pairs
    from relscope.cli import main
    from relscope.data.groups import read_groups
    from relscope.models.heads import build_head
    from relscope.models.load import load_model
    from relscope.analysis.patching.settings import STUDY_LAYOUT
    from relscope.prompts import PromptBuilder, get_template

    model, out = str(tiny_family_dir("llama")), tmp_path / "patch"
    assert main(["patch", model, "--groups", str(tiny_groups), "--max-pairs", "2", "--min-gap", "0", "--components",
                 "attn", "--perturbation", "inject", "--scores", "--out", str(out), "--quiet"]) == 0
    saved = np.load(out / "ie_scores.npz")
    loaded = load_model(model)
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no", STUDY_LAYOUT), 256)  # the command's default
    pairs, _ = build_pairs(read_groups(tiny_groups), builder, max_pairs=2, perturbation="inject")
    def text(prompt, group):
        return loaded.tokenizer.decode([prompt.input_ids[i] for i in prompt.positions(group)]).split()

    query, clean, corrupted = text(pairs[0].clean, "query"), text(pairs[0].clean, "document"), text(pairs[0].corrupted,
                                                                                                      "document")
    assert clean[1:len(query)] == query[:-1] != corrupted[1:len(query)]  # written in after word one (cut to length)
    assert clean[0] == corrupted[0]
    engine = PatchingEngine(loaded.model, loaded.spec, build_head("yes_no", loaded.model, builder))
    n_heads = engine.n_heads
    assert saved["ie"].shape == (2, len(SCORE_BLOCKS), 3, n_heads)  # pairs, blocks, layers, heads
    direct = engine.sweep(pairs[1], [Site("scores", 2, "last>document", 1)]).indirect_effects()[0]
    assert saved["ie"][1, 1, 2, 1] == pytest.approx(direct, abs=1e-5)
    assert (out / "ie_scores_query_to_document.png").is_file()  # the study's block: the query attending to the document


def test_a_score_block_the_causal_mask_leaves_empty_is_refused():
    """--scores patches the query attending to the document (study 002): a query-first layout cannot have it."""
    from relscope.analysis.patching.settings import PatchSettings
    from relscope.errors import ConfigError

    with pytest.raises(ConfigError, match="--query-block query>document: with --layout query-document-instruction"):
        PatchSettings(scores=True, layout="query-document-instruction")
    assert PatchSettings(scores=True, layout="query-document-instruction", query_block="document>query").scores
    assert PatchSettings(scores=True).query_block == "query>document"  # the default layout puts the document first
