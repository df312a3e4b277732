"""Query and key patching (AtP*'s query and key nodes) on tiny models of every family, grouped-query attention
included: a patch equals writing the clean vectors into the model's own attention (an independent computation),
clean into clean changes nothing, the fast path equals the batched and naive ones, AtP's estimate is the
directional derivative in the query or key, and AtP*'s QK fix is the derivative along the exact change of the
head outputs (and what GradDrop averages)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from test_patching import FAMILIES, _setup
from tiny import tiny_config, tiny_tokenizer
from transformers import AttentionInterface, AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from relscope.analysis.patching.atp import attribution_patching
from relscope.analysis.patching.engine import PatchingEngine, PatchPair
from relscope.analysis.patching.pairs import build_pairs
from relscope.analysis.patching.scores import record_attention
from relscope.analysis.patching.sites import Site, qk_sites
from relscope.data.groups import read_groups
from relscope.errors import ConfigError
from relscope.models.heads import build_head
from relscope.models.load import LoadedModel
from relscope.models.specs import get_spec
from relscope.prompts import PromptBuilder, get_template

_rewrite: dict = {}


def _rewriting_attention(module, query, key, value, attention_mask, **kwargs):
    """Eager attention with one head's queries (or one key/value head's keys) at some positions moved to
    corrupted + step * (clean - corrupted)."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    if _rewrite and module.layer_idx == _rewrite["layer"]:
        vectors = (query if _rewrite["which"] == "q" else key).clone()
        head, positions = _rewrite["head"], _rewrite["positions"]
        vectors[0, head, positions] += _rewrite["step"] * (_rewrite["clean"][0, head, positions] -
                                                           vectors[0, head, positions])
        query, key = (vectors, key) if _rewrite["which"] == "q" else (query, vectors)
    return eager(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("test_qk_rewrite", _rewriting_attention)
AttentionMaskInterface.register("test_qk_rewrite", eager_mask)


def _rewritten_logit_diff(engine, pair: PatchPair, site: Site, step: float = 1.0) -> float:
    layer = record_attention(engine, pair.clean).layers[site.layer]
    clean = layer.queries if site.component == "q" else layer.keys
    before = engine.model.config._attn_implementation
    _rewrite.update(layer=site.layer, which=site.component, head=site.head, step=step, clean=clean,
                    positions=torch.tensor(pair.corrupted.positions(site.group)))
    engine.model.set_attn_implementation("test_qk_rewrite")
    try:
        return _logit_diff(engine, pair)
    finally:
        _rewrite.clear()
        engine.model.set_attn_implementation(before)


def _logit_diff(engine, pair: PatchPair, edits=None) -> float:
    """The corrupted prompt's logit difference in the model's own dtype (logit_diffs returns float32)."""
    from relscope.analysis.patching.hooks import patching

    with torch.inference_mode(), patching(engine.model, engine.spec, edits or {}):
        hidden = engine.backbone(input_ids=engine.ids(pair.corrupted)).last_hidden_state[:, -1]
        return float(engine.head(hidden)[0])


def _derivative(f, h: float = 0.1) -> float:
    """f'(0) by central differences with Richardson's extrapolation (error O(h^4)): steps this large because HF's
    norms and rotary embeddings run in float32 even in a float64 model, whose rounding small steps would measure
    (it also sets the absolute tolerances below)."""
    def central(step: float) -> float:
        return (f(step) - f(-step)) / (2 * step)
    return (4 * central(h / 2) - central(h)) / 3


def _some_sites(depth: int, n_heads: int, n_kv: int) -> list[Site]:
    return [Site("q", 0, "document", 0), Site("q", depth - 1, "last", n_heads - 1), Site("q", 1, "all", 1),
            Site("k", 1, "document", 0), Site("k", 0, "query", n_kv - 1), Site("k", depth - 1, "all", n_kv - 1)]


def _odd_attention_setup(variant: str, tiny_groups):
    """What the tiny families leave out: Gemma 2's softcapped attention logits, Gemma 3 with a global layer between
    sliding ones and a query scale other than head_dim, and a Llama run with sdpa rather than eager attention."""
    common = {k: v for k, v in tiny_config("llama").to_dict().items()
              if k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "max_position_embeddings", "pad_token_id", "bos_token_id",
                       "eos_token_id")}
    torch.manual_seed(0)
    if variant == "gemma2":
        config = Gemma2Config(**common, head_dim=8, query_pre_attn_scalar=20, sliding_window=16,
                              attn_logit_softcapping=2.0, final_logit_softcapping=None)
    elif variant == "gemma3_text":
        config = Gemma3TextConfig(**common, head_dim=8, query_pre_attn_scalar=20, sliding_window=16,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    else:
        config = tiny_config("llama")
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa" if variant == "sdpa" else "eager")
    loaded = LoadedModel(model.eval(), tiny_tokenizer(True), get_spec(model), f"tiny-{variant}", "memory")
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no"), 128)
    pairs, _ = build_pairs(read_groups(tiny_groups), builder, max_pairs=2)
    return loaded, PatchingEngine(loaded.model, loaded.spec, build_head("yes_no", loaded.model, builder), 7), pairs


@pytest.mark.parametrize("family", FAMILIES + ["gemma2", "gemma3_global", "sdpa"])
def test_a_query_or_key_patch_equals_writing_the_clean_vectors_inside_attention(family, tiny_groups):
    if family in ("gemma2", "gemma3_global", "sdpa"):
        loaded, engine, pairs = _odd_attention_setup("gemma3_text" if family == "gemma3_global" else family,
                                                     tiny_groups)
    else:
        loaded, engine, pairs, _ = _setup(family, tiny_groups)
    # grouped-query attention (a key feeds several heads) everywhere but the tiny GPT-NeoX
    assert family == "gpt_neox" or engine.n_kv_heads < engine.n_heads
    sites = _some_sites(loaded.model.config.num_hidden_layers, engine.n_heads, engine.n_kv_heads)
    result = engine.sweep(pairs[0], sites)
    rewritten = np.array([_rewritten_logit_diff(engine, pairs[0], s) for s in sites])
    np.testing.assert_allclose(result.patched, rewritten, atol=2e-6)
    assert np.abs(result.patched - result.corrupted).max() > 2e-5  # patches that move the judgment, beyond the atol


@pytest.mark.parametrize("family", FAMILIES)
def test_query_and_key_patching_clean_into_clean_changes_nothing(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    pair = PatchPair(pairs[0].qid, pairs[0].clean, pairs[0].clean)
    queries, keys = qk_sites(range(loaded.model.config.num_hidden_layers), engine.n_heads, engine.n_kv_heads)
    result = engine.sweep(pair, queries + keys)
    np.testing.assert_allclose(result.patched, result.clean, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("template", ["yes_no", "pairwise"])
def test_query_and_key_fast_path_equals_the_batched_and_naive_ones(family, template, tiny_groups):
    from relscope.analysis.patching.fast import FastPatcher

    loaded, engine, pairs, _ = _setup(family, tiny_groups, template)
    queries, keys = qk_sites(range(loaded.model.config.num_hidden_layers), engine.n_heads, engine.n_kv_heads,
                             ("last", "query", "document", "all"))
    sites = queries + keys
    fast = FastPatcher(engine).sweep(pairs[0], sites)
    batched = engine.sweep(pairs[0], sites)
    assert np.max(np.abs(fast.patched - batched.patched)) <= 1e-5
    sample = slice(None, None, max(1, len(sites) // 8))
    naive = np.array([engine.naive(pairs[0], s) for s in sites[sample]])
    np.testing.assert_allclose(batched.patched[sample], naive, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_atp_on_queries_and_keys_is_the_derivative_along_clean_minus_corrupted(family, tiny_groups):
    """Plain AtP: the gradient through the softmax, i.e. d LD / d step at step 0 (central differences of the
    rewritten forward), in float64."""
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    loaded.model.to(torch.float64)
    sites = _some_sites(loaded.model.config.num_hidden_layers, engine.n_heads, engine.n_kv_heads)
    pair = pairs[0]
    atp = attribution_patching(engine, pair, sites)
    numeric = np.array([_derivative(lambda step: _rewritten_logit_diff(engine, pair, s, step)) for s in sites])
    scale = np.abs(numeric).max()
    assert scale > 1e-5  # not all zero
    np.testing.assert_allclose(atp.patched - atp.corrupted, numeric, rtol=1e-2, atol=2e-2 * scale)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_the_qk_fix_is_the_derivative_along_the_exact_change_of_the_head_outputs(family, tiny_groups):
    """AtP*'s QK fix: the softmax recomputed exactly, linear only after it: d LD / d eps of the corrupted run with
    eps times the patch's exact change of the head outputs added, which differs from plain AtP. In float64, as
    above."""
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    loaded.model.to(torch.float64)
    sites = _some_sites(loaded.model.config.num_hidden_layers, engine.n_heads, engine.n_kv_heads)
    pair = pairs[0]
    fixed = attribution_patching(engine, pair, sites, qk_fix=True)
    plain = attribution_patching(engine, pair, sites)
    changes = engine.attention_changes(pair, sites)
    numeric = []
    for site in sites:
        where = torch.tensor(pair.corrupted.positions(site.rows))
        numeric.append(_derivative(lambda step: _logit_diff(
            engine, pair, {site.key: [engine.edit(0, site, where, {site: step * changes[site]})]})))
    scale = np.abs(numeric).max()
    assert scale > 1e-5
    np.testing.assert_allclose(fixed.patched - fixed.corrupted, numeric, rtol=1e-2, atol=2e-2 * scale)
    assert np.max(np.abs(fixed.patched - plain.patched)) > 1e-2 * scale  # the fix changes something


def test_graddrop_uses_the_qk_fix(tiny_groups):
    """GradDrop's term for a query/key site and layer m is the QK-fixed AtP estimate with layer m's writes cut."""
    from test_attribution import atp_with_writes_cut

    from relscope.analysis.patching.graddrop import layer_terms

    loaded, engine, pairs, _ = _setup("llama", tiny_groups)
    depth = loaded.model.config.num_hidden_layers
    sites = _some_sites(depth, engine.n_heads, engine.n_kv_heads)
    terms, _, _ = layer_terms(engine, pairs[0], sites)
    for layer in range(depth):
        cut = atp_with_writes_cut(engine, pairs[0], sites, layer, qk_fix=True)
        expected = cut.patched - cut.corrupted
        expected[[s.layer == layer for s in sites]] = 0.0
        np.testing.assert_allclose(terms[layer], expected, rtol=1e-4, atol=1e-6)


def test_estimators_without_a_query_key_definition_are_refused(tiny_groups, tiny_family_dir):
    from relscope.analysis.patching.estimators import estimate
    from relscope.analysis.patching.settings import PatchSettings

    _, engine, pairs, _ = _setup("llama", tiny_groups)
    for method in ("relp", "ig", "atp-nearest"):
        with pytest.raises(ValueError, match="query or key"):
            estimate(method, engine, pairs[0], [Site("q", 0, "last", 0)])
        with pytest.raises(ConfigError, match="--qk"):
            PatchSettings(model=str(tiny_family_dir("llama")), groups=str(tiny_groups), qk=True, attribution=method)


def test_patch_qk_writes_query_and_key_heatmaps_and_validates_them(tiny_family_dir, tiny_groups, tmp_path):
    from relscope.cli import main

    out = tmp_path / "qk"
    assert main(["patch", str(tiny_family_dir("llama")), "--groups", str(tiny_groups), "--max-pairs", "2",
                 "--min-gap", "0", "--components", "attn", "--qk", "--head-positions", "last", "document",
                 "--attribution", "atp", "--validate", "--out", str(out), "--quiet"]) == 0
    queries, keys = np.load(out / "ie_queries.npz"), np.load(out / "ie_keys.npz")
    assert queries["ie"].shape[1:] == (2, 3, 4) and keys["ie"].shape[1:] == (2, 3, 2)  # groups, layers, (kv) heads
    assert (out / "ie_queries_document.png").exists() and (out / "ie_keys_last.png").exists()
    rows = {r["site type"]: r for r in json.loads((out / "manifest.json").read_text())["validation"]}
    assert {"attn", "query", "key"} <= set(rows) and rows["key"]["passes per pair"] == 3 + 2
    from relscope.analysis.patching.artefacts import load_ie_heads
    from relscope.errors import DataError

    assert load_ie_heads(out / "ie_queries.npz").ie.shape[-1] == 4
    with pytest.raises(DataError, match="key/value head"):  # a knockout must not read key/value heads as heads
        load_ie_heads(out / "ie_keys.npz")


def test_atp_qk_is_atp_with_the_qk_fix(tiny_groups):
    from relscope.analysis.patching.estimators import estimate

    loaded, engine, pairs, _ = _setup("llama", tiny_groups)
    sites = [Site("attn", 1, "document"), *_some_sites(loaded.model.config.num_hidden_layers, engine.n_heads,
                                                       engine.n_kv_heads)]
    fixed, plain = estimate("atp-qk", engine, pairs[0], sites), estimate("atp", engine, pairs[0], sites)
    np.testing.assert_allclose(fixed.patched, attribution_patching(engine, pairs[0], sites, qk_fix=True).patched)
    assert fixed.patched[0] == pytest.approx(plain.patched[0], abs=1e-6)  # no query/key: the same estimate
