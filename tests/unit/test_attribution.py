"""The attribution estimators against their definitions on tiny models of every family: integrated gradients with
one step is AtP, and its estimate for the whole residual stream at the embeddings converges to the exact patch
(the completeness of integrated gradients), faster as the steps grow."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import tiny_patching

from relscope.analysis.patching.atp import attribution_patching
from relscope.analysis.patching.engine import PatchingEngine
from relscope.analysis.patching.ig import integrated_gradients
from relscope.analysis.patching.sites import Site, head_sites

FAMILIES = ["llama", "gpt_neox", "phi3", "gemma3_text"]


def _setup(family: str, tiny_groups, dtype=torch.float32):
    return tiny_patching(family, tiny_groups, dtype)


def _sites(engine: PatchingEngine) -> list[Site]:
    return [Site("resid_pre", 1, "document"), Site("mlp", 0, "last"), Site("attn", 1, "all"),
            Site("resid_post", 2, "query"), *head_sites(3, engine.n_heads, ("document",))[:2]]


@pytest.mark.parametrize("family", FAMILIES)
def test_integrated_gradients_with_one_step_is_attribution_patching(family, tiny_groups):
    engine, pairs = _setup(family, tiny_groups)
    sites = _sites(engine)
    for pair in pairs:
        atp, ig = attribution_patching(engine, pair, sites), integrated_gradients(engine, pair, sites, steps=1)
        assert (ig.clean, ig.corrupted) == pytest.approx((atp.clean, atp.corrupted), abs=1e-6)
        np.testing.assert_allclose(ig.patched, atp.patched, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_integrated_gradients_of_the_embeddings_converge_to_the_whole_effect(family, tiny_groups):
    """Completeness: the residual stream entering layer 0 at every position is the interpolated variable itself, so
    its estimate tends to LD_clean - LD_corrupted (what patching it does exactly), with a left-Riemann error that
    halves as the steps double. float64, so that the convergence is not lost in rounding."""
    engine, pairs = _setup(family, tiny_groups, torch.float64)
    site = [Site("resid_pre", 0, "all")]
    for pair in pairs:
        errors = []
        for steps in (16, 32, 64):
            ig = integrated_gradients(engine, pair, site, steps=steps)
            errors.append(abs(ig.patched[0] - ig.clean))
        gap = abs(ig.clean - ig.corrupted)
        assert errors[-1] < 0.05 * gap + 1e-9, (family, errors, gap)
        assert errors[2] < 0.7 * errors[0] + 1e-12, errors  # ~1/m: 4x the steps, ~4x smaller


def test_integrated_gradients_refuse_a_pair_of_two_lengths(tiny_groups):
    from dataclasses import replace

    from relscope.analysis.patching.pairs import PatchPair
    from relscope.errors import DataError

    engine, pairs = _setup("llama", tiny_groups)
    shorter = replace(pairs[0].corrupted, input_ids=pairs[0].corrupted.input_ids[:-1])
    with pytest.raises(DataError, match="one length"):
        integrated_gradients(engine, PatchPair(pairs[0].qid, pairs[0].clean, shorter), _sites(engine))


def test_validation_rows_split_the_sites_by_type_and_score_agreement():
    from relscope.analysis.patching.validation import agreement, top_k_recall

    sites = [Site("resid_pre", 0, "all"), Site("resid_post", 1, "last"), Site("mlp", 0, "last"),
             Site("mlp", 1, "last"), Site("mlp", 2, "all"), Site("z", 0, "last", 1), Site("scores", 0, "last>query", 0)]
    rng = np.random.default_rng(0)
    exact = rng.normal(size=(6, len(sites)))
    rows = {r["site type"]: r for r in agreement(exact, 2 * exact + 1, sites)}  # a monotone, affine estimate
    assert list(rows) == ["resid", "mlp", "head", "score block"]
    assert [rows[t]["sites"] for t in rows] == [2, 3, 1, 1]
    assert rows["mlp"]["pearson"] == pytest.approx(1.0) and rows["mlp"]["spearman"] == pytest.approx(1.0)
    assert np.isnan(rows["mlp"]["top-20 recall"])  # 3 sites: any estimate would recall all of them
    flipped = {r["site type"]: r for r in agreement(exact, -exact, sites)}
    assert flipped["mlp"]["pearson"] == pytest.approx(-1.0)
    assert top_k_recall(np.array([3.0, -2.0, 0.1, 0.0]), np.array([0.0, 5.0, 4.0, -1.0]), k=2) == 0.5
    assert np.isnan(top_k_recall(np.array([3.0, np.nan, 0.1]), np.array([1.0, 2.0, 3.0]), k=1))


def test_estimates_alone_are_written_as_the_grid_and_validate_needs_an_estimator(tiny_family_dir, tiny_groups,
                                                                                  tmp_path, capsys):
    from relscope.cli import main

    args = ["patch", str(tiny_family_dir("llama")), "--groups", str(tiny_groups), "--max-pairs", "2", "--min-gap",
            "0", "--components", "mlp", "--quiet"]
    assert main([*args, "--validate", "--out", str(tmp_path / "bad")]) == 2
    assert "--attribution" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*args, "--attribution", "ig", "--ig-steps", "3", "--validate", "--out", str(tmp_path / "both")]) == 0
    assert main([*args, "--attribution", "ig", "--ig-steps", "3", "--out", str(tmp_path / "alone")]) == 0
    alone, both = np.load(tmp_path / "alone" / "ie.npz"), np.load(tmp_path / "both" / "ie_ig.npz")
    assert str(alone["method"]) == "ig" and str(np.load(tmp_path / "both" / "ie.npz")["method"]) == "exact"
    np.testing.assert_array_equal(alone["ie"], both["ie"])  # the estimate is the same, validated or not
    assert "estimated by ig" in capsys.readouterr().out
    forwards = [json.loads((tmp_path / name / "manifest.json").read_text())["forwards"] for name in ("alone", "both")]
    assert forwards[0] < forwards[1]  # no exact sweep when nothing is validated


@pytest.mark.parametrize("family", FAMILIES + ["qwen3", "mistral"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_lrp_rules_leave_every_forward_bit_for_bit_and_change_the_backward(family, attention, tiny_groups):
    from relscope.analysis.patching.relp import lrp_rules, relevance_patching

    engine, pairs = _setup(family, tiny_groups)
    engine.model.set_attn_implementation(attention)
    ids = engine.ids(pairs[0].corrupted)
    plain = engine.logit_diffs(ids)
    with lrp_rules(engine.model, engine.spec):
        ruled = engine.logit_diffs(ids)
    assert np.array_equal(plain, ruled) and np.array_equal(engine.logit_diffs(ids), plain)
    assert engine.model.config._attn_implementation == attention  # restored
    sites = _sites(engine)
    atp, relp = attribution_patching(engine, pairs[0], sites), relevance_patching(engine, pairs[0], sites)
    assert (relp.clean, relp.corrupted) == (atp.clean, atp.corrupted)
    assert not np.allclose(relp.patched, atp.patched)  # the rules are in the backward
    np.testing.assert_array_equal(attribution_patching(engine, pairs[0], sites).patched, atp.patched)  # removed


@pytest.mark.parametrize("family", ["llama", "phi3", "gemma3_text", "qwen3", "mistral"])
def test_relevance_is_conserved_through_every_layer_of_a_bias_free_model(family, tiny_groups):
    """LRP's conservation: with the rules on and no biases, sum(h * rho) of the residual stream entering each layer
    (the embeddings first) is LD itself. A wrong rule (a norm's scale left in the backward, a gate not halved, the
    softmax differentiated) breaks it by percents: that is what checks the rules. float64, though Hugging Face's
    RMSNorms compute in float32, which bounds the agreement near 1e-8."""
    from relscope.analysis.patching.atp import embeddings_output
    from relscope.analysis.patching.hooks import capturing
    from relscope.analysis.patching.relp import lrp_rules

    engine, pairs = _setup(family, tiny_groups, torch.float64)
    keys = [("resid_pre", layer) for layer in range(3)] + [("resid_post", 2)]
    for pair in pairs:
        store: dict = {}
        with lrp_rules(engine.model, engine.spec), torch.enable_grad(), embeddings_output(engine), \
                capturing(engine.model, engine.spec, keys, store, detach=False):
            ld = engine.head(engine.backbone(input_ids=engine.ids(pair.corrupted)).last_hidden_state[:, -1])[0]
            grads = torch.autograd.grad(ld, [store[k] for k in keys])
        for key, grad in zip(keys, grads):
            relevance = float((store[key] * grad).sum().detach())
            assert relevance == pytest.approx(float(ld.detach()), rel=1e-6), (family, key)


@pytest.mark.parametrize("family", ["phi3", "gpt_neox"])
def test_relp_validates_on_every_site_type(family, tiny_family_dir, tiny_groups, tmp_path):
    from relscope.cli import main

    out = tmp_path / "relp"
    assert main(["patch", str(tiny_family_dir(family)), "--groups", str(tiny_groups), "--max-pairs", "2",
                 "--min-gap", "0", "--heads", "--scores", "--attribution", "relp", "--validate", "--out", str(out),
                 "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {row["site type"]: row for row in manifest["validation"]}
    assert list(rows) == ["resid", "attn", "mlp", "head", "score block"]
    assert all(np.isfinite(row["pearson"]) and -1 <= row["pearson"] <= 1 for row in rows.values())
    assert rows["resid"]["passes per pair"] == 3 and rows["score block"]["passes per pair"] == 5  # + recording
    assert str(np.load(out / "ie_scores_relp.npz")["method"]) == "relp"


def test_relp_with_no_rule_is_attribution_patching_and_each_rule_changes_it(tiny_groups):
    from relscope.analysis.patching.relp import relevance_patching
    from relscope.analysis.patching.sites import LRP_RULES

    engine, pairs = _setup("llama", tiny_groups)
    sites = _sites(engine)
    atp = attribution_patching(engine, pairs[0], sites)
    np.testing.assert_array_equal(relevance_patching(engine, pairs[0], sites, ()).patched, atp.patched)
    for rule in LRP_RULES:
        assert not np.allclose(relevance_patching(engine, pairs[0], sites, (rule,)).patched, atp.patched), rule


@pytest.mark.parametrize("dropped", ["norm", "activation", "gate", "attention"])
def test_relevance_leaks_when_any_one_rule_is_left_out(dropped, tiny_groups):
    """The complement of the conservation test: without any one of the four rules, sum(h * rho) at the embeddings
    is no longer LD (so the conservation test checks each rule)."""
    from relscope.analysis.patching.atp import embeddings_output
    from relscope.analysis.patching.hooks import capturing
    from relscope.analysis.patching.relp import lrp_rules
    from relscope.analysis.patching.sites import LRP_RULES

    engine, pairs = _setup("llama", tiny_groups, torch.float64)
    store: dict = {}
    rules = [rule for rule in LRP_RULES if rule != dropped]
    with lrp_rules(engine.model, engine.spec, rules), torch.enable_grad(), embeddings_output(engine), \
            capturing(engine.model, engine.spec, [("resid_pre", 0)], store, detach=False):
        ld = engine.head(engine.backbone(input_ids=engine.ids(pairs[0].corrupted)).last_hidden_state[:, -1])[0]
        grad = torch.autograd.grad(ld, [store[("resid_pre", 0)]])[0]
    assert float((store[("resid_pre", 0)] * grad).sum().detach()) != pytest.approx(float(ld.detach()), rel=1e-4)


def test_compare_refuses_an_estimate_against_exact_effects(tiny_family_dir, tiny_groups, tmp_path, capsys):
    from relscope.cli import main

    args = ["patch", str(tiny_family_dir("llama")), "--groups", str(tiny_groups), "--max-pairs", "2", "--min-gap",
            "0", "--components", "resid_pre", "mlp", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "exact")]) == 0
    assert main([*args, "--attribution", "atp", "--out", str(tmp_path / "atp")]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "exact"), str(tmp_path / "atp"), "--out", str(tmp_path / "c")]) == 2
    assert "holds exact effects" in capsys.readouterr().err and not any((tmp_path / "c").glob("*"))


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma3_text"])
def test_graddrop_is_the_mean_of_absolute_estimates_with_one_layers_writes_detached(family, tiny_groups):
    """AtP*'s definition computed another way: for each layer, its attention and MLP outputs replaced in the forward
    by a value whose gradient is 0 (a different cut from the backward hooks graddrop.py uses), the plain AtP
    estimate; then |.| averaged over the layers that can reach the site."""
    from relscope.analysis.patching.graddrop import grad_drop, layer_terms

    engine, pairs = _setup(family, tiny_groups)
    sites = _sites(engine)
    pair = pairs[0]
    terms, _, _ = layer_terms(engine, pair, sites)
    atp = attribution_patching(engine, pair, sites)
    depth = len(engine.spec.layer_list(engine.model))
    for layer in range(depth):
        cut = atp_with_writes_cut(engine, pair, sites, layer)
        expected = cut.patched - cut.corrupted
        inside = [s.component not in ("resid_pre", "resid_post") and s.layer == layer for s in sites]
        expected[inside] = 0.0
        np.testing.assert_allclose(terms[layer], expected, rtol=1e-4, atol=1e-6)
        below = [s.layer > layer for s in sites]  # a cut under the site leaves its gradient alone
        np.testing.assert_allclose(terms[layer][below], (atp.patched - atp.corrupted)[below], rtol=1e-5, atol=1e-7)
    result = grad_drop(engine, pair, sites)
    counted = np.array([depth if s.component in ("resid_pre", "resid_post") else depth - 1 for s in sites])
    np.testing.assert_allclose(np.abs(result.patched - result.corrupted), np.abs(terms).sum(0) / counted)
    assert (result.indirect_effects() >= 0).all()


def atp_with_writes_cut(engine: PatchingEngine, pair, sites, layer: int, qk_fix: bool = False):
    """AtP with layer `layer`'s attention and MLP outputs replaced in the forward by a value whose gradient is 0."""
    handles = [module.register_forward_hook(lambda _m, _a, out: (_cut(out[0]), *out[1:])
                                            if isinstance(out, tuple) else _cut(out))
               for module in (engine.spec.attention_of(engine.model, layer), engine.spec.mlp_of(engine.model, layer))]
    try:
        return attribution_patching(engine, pair, sites, qk_fix=qk_fix)
    finally:
        for handle in handles:
            handle.remove()


def _cut(write: torch.Tensor) -> torch.Tensor:
    """`write` in the forward; nothing flows back through it to what computed it."""
    return write.detach() + 0.0 * write


def test_atp_star_is_validated_on_magnitudes(tiny_family_dir, tiny_groups, tmp_path):
    from relscope.cli import main

    out = tmp_path / "star"
    assert main(["patch", str(tiny_family_dir("llama")), "--groups", str(tiny_groups), "--max-pairs", "2",
                 "--min-gap", "0", "--heads", "--attribution", "atp-star", "--validate", "--out", str(out),
                 "--quiet"]) == 0
    rows = json.loads((out / "manifest.json").read_text())["validation"]
    assert [r["passes per pair"] for r in rows] == [2 + 3] * len(rows)  # tiny: 3 layers, one backward each
    assert (np.load(out / "ie_atp-star.npz")["ie"] >= 0).all()


def _complement(pair, site: Site) -> torch.Tensor:
    """The positions from the first difference on that a residual site does not patch (its C)."""
    from relscope.analysis.patching.fast import first_difference

    patched = set(pair.corrupted.positions(site.rows))
    return torch.tensor([p for p in range(first_difference(pair), len(pair.corrupted)) if p not in patched],
                        dtype=torch.long)


def _clean_with(engine: PatchingEngine, pair, key, where: torch.Tensor, values: torch.Tensor) -> float:
    """LD of the clean prompt with the (component, layer) activation overwritten at `where`, in the model's dtype."""
    from relscope.analysis.patching.hooks import Edit, patching

    with torch.inference_mode(), patching(engine.model, engine.spec, {key: [Edit(0, where, values)]}):
        hidden = engine.backbone(input_ids=engine.ids(pair.clean)).last_hidden_state[:, -1]
        return float(engine.head(hidden)[0])


RESIDUAL_SITES = [Site("resid_pre", 1, "document"), Site("resid_post", 0, "last"), Site("resid_pre", 2, "query"),
                  Site("resid_post", 2, "document")]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_residual_patch_is_the_clean_run_with_the_rest_of_the_stream_corrupted(family, tiny_groups):
    """The identity atp-nearest stands on: patching positions G of the residual stream into the corrupted run is the
    clean prompt with every other position from the first difference on set to its corrupted value."""
    engine, pairs = _setup(family, tiny_groups)
    for pair in pairs:
        exact = engine.sweep(pair, RESIDUAL_SITES)
        for i, site in enumerate(RESIDUAL_SITES):
            rest = _complement(pair, site)
            corrupted = engine.activations(pair.corrupted, [site.key])[site.key]
            assert _clean_with(engine, pair, site.key, rest, corrupted[rest]) == pytest.approx(
                exact.patched[i], abs=1e-5), (family, site)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_estimate_about_the_clean_run_is_the_derivative_of_corrupting_the_rest(family, tiny_groups):
    """Its first-order term about the clean run, by central differences along r_corrupted - r_clean on C. float64
    weights; Hugging Face still runs norms in float32, whose rounding swamps steps below ~1e-2, hence steps of 0.1
    and 0.05 extrapolated."""
    from relscope.analysis.patching.atp import gradient_run
    from relscope.analysis.patching.nearest import ResidualSides

    engine, pairs = _setup(family, tiny_groups, torch.float64)
    pair = pairs[0]
    keys = sorted({s.key for s in RESIDUAL_SITES})
    clean, clean_grads, _ = gradient_run(engine, pair.clean, keys, keys)
    corrupted, _, _ = gradient_run(engine, pair.corrupted, keys, keys)
    sides = ResidualSides(engine, pair, clean, corrupted, clean_grads)
    for site in RESIDUAL_SITES:
        rest = _complement(pair, site)
        step = corrupted[site.key][rest] - clean[site.key][rest]

        def central(eps: float) -> float:
            moved = [_clean_with(engine, pair, site.key, rest, clean[site.key][rest] + s * eps * step) for s in (1, -1)]
            return (moved[0] - moved[1]) / (2 * eps)

        derivative = (4 * central(0.05) - central(0.1)) / 3  # Richardson: the eps^2 error cancels
        effect = sides.per_position(site.key)[1][~sides.in_group(site.rows)].sum()
        assert derivative == pytest.approx(float(effect), rel=1e-3, abs=1e-6), site


@pytest.mark.parametrize("family", FAMILIES)
def test_atp_nearest_is_atp_off_the_residual_stream_and_exact_for_the_whole_stream(family, tiny_groups):
    from relscope.analysis.patching.nearest import nearest_end_patching

    engine, pairs = _setup(family, tiny_groups)
    sites = _sites(engine) + [Site("resid_pre", 0, "all"), Site("resid_post", 2, "all"), Site("resid_pre", 1, "last")]
    residual = [i for i, s in enumerate(sites) if s.component in ("resid_pre", "resid_post")]
    for pair in pairs:
        atp, nearest = attribution_patching(engine, pair, sites), nearest_end_patching(engine, pair, sites)
        assert (nearest.clean, nearest.corrupted) == pytest.approx((atp.clean, atp.corrupted), abs=1e-6)
        others = [i for i in range(len(sites)) if i not in residual]
        np.testing.assert_allclose(nearest.patched[others], atp.patched[others], rtol=1e-5, atol=1e-6)
        ie = nearest.indirect_effects()
        assert ie[-3] == ie[-2] == pytest.approx(1.0, abs=1e-6)  # no step from the clean run: the clean run
        assert ie[3] == pytest.approx(0.0, abs=1e-6)  # the query precedes the first difference: nothing to patch
        # the last token is a short step from the corrupted run, the rest of the stream a long one from the clean run
        assert nearest.patched[-1] == pytest.approx(atp.patched[-1], abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_atp_nearest_takes_the_side_of_the_shorter_step(family, tiny_groups):
    """Each residual site's estimate is LD_clean + (r_corrupted - r_clean) . dLD/dr on the clean run summed over the
    rest of the stream when that step is the shorter, else AtP's (the gradient read here by autograd on the clean
    prompt, the norms from plain forwards); both sides occur among the document's patches."""
    from relscope.analysis.patching.nearest import nearest_end_patching

    engine, pairs = _setup(family, tiny_groups)
    sites = [Site(c, layer, g) for c in ("resid_pre", "resid_post") for layer in range(3)
             for g in ("document", "instruction")]
    sides = []
    for pair in pairs:
        nearest, atp = nearest_end_patching(engine, pair, sites), attribution_patching(engine, pair, sites)
        for i, site in enumerate(sites):
            rest = _complement(pair, site)
            patched = torch.tensor(sorted(set(range(len(pair.corrupted))) - set(rest.tolist())), dtype=torch.long)
            clean = engine.activations(pair.clean, [site.key])[site.key].clone().requires_grad_(True)
            corrupted = engine.activations(pair.corrupted, [site.key])[site.key]
            change = (corrupted - clean.detach()).double()
            if change[rest].norm() >= change[patched].norm():
                sides.append("corrupted")
                assert nearest.patched[i] == pytest.approx(atp.patched[i], abs=1e-6), (family, site)
                continue
            sides.append("clean")
            with torch.enable_grad(), _replaced(engine, site.key, clean):
                hidden = engine.backbone(input_ids=engine.ids(pair.clean)).last_hidden_state[:, -1]
                (grad,) = torch.autograd.grad(engine.head(hidden)[0], clean)
            expected = nearest.clean + float((change * grad.double())[rest].sum())
            assert nearest.patched[i] == pytest.approx(expected, rel=1e-4, abs=1e-5), (family, site)
    assert set(sides) == {"clean", "corrupted"}, sides


def _replaced(engine: PatchingEngine, key, values: torch.Tensor):
    """Write `values` (seq, width) over the (component, layer) activation at every position: a leaf to read the
    gradient at, through the engine's own patching hook."""
    from relscope.analysis.patching.hooks import Edit, patching

    return patching(engine.model, engine.spec, {key: [Edit(0, torch.arange(len(values)), values)]})


def test_atp_nearest_refuses_a_pair_of_two_layouts(tiny_groups):
    from dataclasses import replace

    from relscope.analysis.patching.nearest import nearest_end_patching
    from relscope.analysis.patching.pairs import PatchPair
    from relscope.errors import DataError

    engine, pairs = _setup("llama", tiny_groups)
    shorter = replace(pairs[0].corrupted, input_ids=pairs[0].corrupted.input_ids[:-1])
    with pytest.raises(DataError, match="one token layout"):
        nearest_end_patching(engine, PatchPair(pairs[0].qid, pairs[0].clean, shorter), _sites(engine))


def test_atp_nearest_validates_with_its_passes(tiny_family_dir, tiny_groups, tmp_path):
    from relscope.cli import main

    out = tmp_path / "p"
    assert main(["patch", str(tiny_family_dir("gemma3_text")), "--groups", str(tiny_groups), "--max-pairs", "2",
                 "--min-gap", "0", "--components", "resid_pre", "mlp", "--heads", "--attribution", "atp-nearest",
                 "--validate", "--out", str(out), "--quiet"]) == 0
    estimate = np.load(out / "ie_atp-nearest.npz")
    assert str(estimate["method"]) == "atp-nearest" and np.isfinite(estimate["ie"]).all()
    assert "atp-nearest" in (out / "validation.md").read_text()
    rows = {r["site type"]: r for r in json.loads((out / "manifest.json").read_text())["validation"]}
    # the heads' call has no residual site, so no clean backward: AtP's passes
    assert [rows[t]["passes per pair"] for t in ("resid", "mlp", "head")] == [4, 4, 3]
    assert main(["patch", str(tiny_family_dir("gemma3_text")), "--groups", str(tiny_groups), "--max-pairs", "2",
                 "--min-gap", "0", "--components", "attn", "mlp", "--heads", "--attribution", "atp-nearest",
                 "--validate", "--out", str(tmp_path / "none"), "--quiet"]) == 0
    rows = json.loads((tmp_path / "none" / "manifest.json").read_text())["validation"]
    assert [r["passes per pair"] for r in rows] == [3] * 3  # attn, mlp, head: AtP's run, AtP's passes
