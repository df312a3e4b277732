"""Per-head readouts: the heads' writes add up to the attention block's output, the logit lens of the whole final
residual is the model's own prediction, the interaction score is the sum of row maxima, and the command's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_patching import FAMILIES, _setup

from relscope.analysis.heads import HeadAnalysis, interaction, interaction_block
from relscope.analysis.patching.hooks import capturing


@pytest.mark.parametrize("family", FAMILIES)
def test_the_heads_writes_add_up_to_what_the_attention_adds_to_the_residual(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    analysis = HeadAnalysis(engine, "document>query")  # _setup's prompts put the query first
    _, last = analysis._forward(pairs[0].clean)
    writes = analysis.head_writes(last)
    store: dict = {}
    with torch.no_grad(), capturing(engine.model, engine.spec, [("attn", 1)], store):
        engine.backbone(input_ids=engine.ids(pairs[0].clean))
    o_proj = engine.spec.projection_of(engine.model, 1, "o")
    bias = o_proj.bias.detach() if o_proj.bias is not None else 0.0
    attention_output = store[("attn", 1)][0, -1]
    if analysis.sandwich_norms:  # Gemma: what the layer adds to the residual is the normed attention output
        with torch.no_grad():
            attention_output = engine.spec.layer_list(engine.model)[1].post_attention_layernorm(attention_output)
    np.testing.assert_allclose((writes[1].sum(0) + bias).numpy(), attention_output.numpy(), atol=1e-5)
    assert analysis.sandwich_norms == (family == "gemma3_text")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_logit_lens_of_the_final_residual_is_the_models_prediction(family, tiny_groups):
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    analysis = HeadAnalysis(engine, "document>query")  # _setup's prompts put the query first
    _, last = analysis._forward(pairs[0].clean)
    residual = last[("resid_post", analysis.depth - 1)].float().numpy()
    ids, _ = analysis.logit_lens(residual[None, None], top=1, final_norm=True)  # as the model reads its residual
    with torch.no_grad():
        logits = engine.model(input_ids=engine.ids(pairs[0].clean)).logits[0, -1]
    assert ids[0, 0, 0] == int(logits.argmax())


def test_direct_contributions_are_the_logit_difference_lost_without_the_head(tiny_groups):
    loaded, engine, pairs, _ = _setup("llama", tiny_groups)
    analysis = HeadAnalysis(engine, "document>query")  # _setup's prompts put the query first
    readout = analysis.readout(pairs[0])
    _, last = analysis._forward(pairs[0].clean)
    residual = last[("resid_post", analysis.depth - 1)]
    full = float(engine.logit_diffs(engine.ids(pairs[0].clean))[0])
    with torch.no_grad():
        without = engine.head(analysis.final_norm(residual - torch.from_numpy(readout.writes[2, 1]))[None])
    assert readout.direct[2, 1] == pytest.approx(full - float(without[0]), abs=1e-5)
    assert readout.direct.shape == readout.interaction.shape == (analysis.depth, engine.n_heads)


def test_interaction_is_the_sum_of_row_maxima_over_the_block():
    weights = torch.rand(3, 6, 6)
    rows, columns = [4, 5], [1, 2]
    expected = torch.tensor([sum(max(float(weights[h, i, k]) for k in columns) for i in rows) for h in range(3)])
    torch.testing.assert_close(interaction(weights, rows, columns), expected)
    assert interaction(weights, [], columns).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("template", ["yes_no", "pairwise"])
def test_the_interaction_score_reads_the_query_attending_to_the_document_as_the_study_does(template, tiny_groups):
    """Study 002: s = sum over query tokens of the max attention on document tokens. It needs the document first; in
    a query-first prompt that block is empty under the causal mask and is refused, naming the fix."""
    from relscope.analysis.patching.engine import PatchingEngine
    from relscope.analysis.patching.pairs import build_pairs
    from relscope.analysis.patching.settings import STUDY_LAYOUT
    from relscope.data.groups import read_groups
    from relscope.errors import ConfigError
    from relscope.prompts.templates import get_template
    from relscope.prompts.tokenize import PromptBuilder

    loaded, engine, query_first, _ = _setup("llama", tiny_groups, template)
    with pytest.raises(ConfigError, match="document-query-instruction"):
        interaction_block(query_first[0].clean, "query>document")
    assert interaction_block(query_first[0].clean, "document>query") == ("document", "query")  # the named option
    builder = PromptBuilder(loaded.tokenizer, get_template(template, STUDY_LAYOUT), 128)
    pairs, _ = build_pairs(read_groups(tiny_groups), builder, max_pairs=1)
    assert interaction_block(pairs[0].clean, "query>document") == ("query", "document")
    readout = HeadAnalysis(PatchingEngine(loaded.model, loaded.spec, engine.head), "query>document").readout(pairs[0])
    assert np.abs(readout.interaction).max() > 0


def test_heads_command_writes_its_tables_and_marks_top_ie_heads(tiny_family_dir, tiny_groups, tmp_path, capsys):
    from relscope.cli import main

    model = str(tiny_family_dir("llama"))
    assert main(["patch", model, "--groups", str(tiny_groups), "--max-pairs", "2", "--min-gap", "0", "--components",
                 "mlp", "--heads", "--out", str(tmp_path / "patch"), "--quiet"]) == 0
    out = tmp_path / "heads"
    assert main(["heads", model, "--groups", str(tiny_groups), "--max-pairs", "3", "--ie-heads",
                 str(tmp_path / "patch" / "ie_heads.npz"), "--marked", "3", "--out", str(out), "--quiet"]) == 0
    saved = np.load(out / "heads.npz")
    assert saved["interaction"].shape[0] == saved["direct"].shape[0] == 3
    for name in ("heads.csv", "top_heads.md", "interaction.png", "direct.png", "manifest.json"):
        assert (out / name).is_file()
    assert "top-1 is yes/A" in (out / "heads.csv").read_text()
    assert main(["heads", model, "--ie-heads", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_the_logit_lens_is_the_studys_unembedding_of_the_write_and_the_normed_one_is_labelled(family, tiny_groups):
    """Study 002's logit lens is W_U a + b on a head's output, no final norm; through the norm is the other lens."""
    loaded, engine, pairs, _ = _setup(family, tiny_groups)
    analysis = HeadAnalysis(engine, "document>query")  # _setup's prompts put the query first
    writes = analysis.readout(pairs[0]).writes  # (layers, heads, d_model)
    ids, values = analysis.logit_lens(writes, top=3)
    unembedding = engine.model.get_output_embeddings()
    a = torch.from_numpy(writes[1, 0]).float()
    with torch.no_grad():
        by_hand = a @ unembedding.weight.float().T + (unembedding.bias.float() if unembedding.bias is not None else 0)
    assert list(ids[1, 0]) == by_hand.topk(3).indices.tolist()
    np.testing.assert_allclose(values[1, 0], by_hand.topk(3).values.numpy(), rtol=1e-5, atol=1e-5)
    normed_ids, _ = analysis.logit_lens(writes, top=3, final_norm=True)
    with torch.no_grad():
        through_norm = unembedding(analysis.final_norm(a[None]))[0].float()
    assert list(normed_ids[1, 0]) == through_norm.topk(3).indices.tolist()
