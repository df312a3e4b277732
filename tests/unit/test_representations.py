"""Probes, PCA and document->query attention: exact against direct computations, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import tiny_loaded

from relscope.analysis.attention import document_to_query_attention, eager_attention, mass_to_query
from relscope.analysis.examples import labelled_prompts, last_token_states
from relscope.analysis.probe import cached_states, probe_accuracy
from relscope.cli import main
from relscope.data.groups import read_groups
from relscope.prompts import PromptBuilder, get_template


def _examples(loaded, tiny_groups, template="yes_no", groups=6):
    builder = PromptBuilder(loaded.tokenizer, get_template(template), 128)
    return labelled_prompts(read_groups(tiny_groups), builder, groups)


def test_pairwise_examples_show_each_pair_in_both_orders(tiny_groups):
    loaded = tiny_loaded("llama")
    examples = _examples(loaded, tiny_groups, "pairwise", 4)
    assert [e.label for e in examples] == [1, 0] * 4
    assert examples[0].qid == examples[1].qid and examples[0].prompt.input_ids != examples[1].prompt.input_ids


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "phi3"])
def test_batched_last_token_states_equal_one_unpadded_forward_each(family, tiny_groups):
    loaded = tiny_loaded(family)
    examples = _examples(loaded, tiny_groups)
    backbone = loaded.spec.backbone_of(loaded.model)
    batched = last_token_states(backbone, [e.prompt for e in examples], loaded.tokenizer.pad_token_id, batch_size=5)
    for i, example in enumerate(examples):
        with torch.no_grad():
            states = backbone(input_ids=torch.tensor([example.prompt.input_ids]), output_hidden_states=True).hidden_states
        direct = torch.stack([h[0, -1] for h in states]).numpy()
        np.testing.assert_allclose(batched[:, i], direct, atol=1e-5)
    assert batched.shape[0] == loaded.model.config.num_hidden_layers + 1


def test_a_probe_reads_a_separable_direction_and_not_noise():
    rng = np.random.default_rng(0)
    labels = np.tile([1, 0], 40)
    queries = np.repeat(np.arange(40), 2).astype(str)
    separable = rng.normal(size=(80, 16)) + labels[:, None] * 3.0
    assert probe_accuracy(separable, labels, queries)[0] == 1.0
    assert probe_accuracy(rng.normal(size=(80, 16)), labels, queries)[0] < 0.75


def test_states_are_cached_and_recomputed_when_the_inputs_change(tiny_groups, tmp_path):
    loaded = tiny_loaded("llama")
    examples = _examples(loaded, tiny_groups)
    backbone = loaded.spec.backbone_of(loaded.model)
    cache = tmp_path / "states.npz"
    first = cached_states(loaded.model, backbone, examples, 0, cache, {"model": "a"}, False)
    stamp = cache.stat().st_mtime_ns
    again = cached_states(loaded.model, backbone, examples, 0, cache, {"model": "a"}, False)
    assert np.array_equal(first, again) and cache.stat().st_mtime_ns == stamp  # read, not recomputed
    cached_states(loaded.model, backbone, examples[:4], 0, cache, {"model": "a"}, False)
    assert np.load(cache)["states"].shape[1] == 4


def test_mass_to_query_is_the_mean_over_document_rows_of_the_query_columns(tiny_groups):
    loaded = tiny_loaded("llama")
    prompt = _examples(loaded, tiny_groups)[0].prompt
    seq = len(prompt)
    attentions = [torch.rand(1, 4, seq, seq) for _ in range(3)]
    got = mass_to_query(attentions, prompt, [0, 2])
    docs, query = prompt.positions("document"), prompt.positions("query")
    for row, layer in enumerate([0, 2]):
        for head in range(4):
            expected = np.mean([sum(float(attentions[layer][0, head, i, j]) for j in query) for i in docs])
            assert got[row, head] == pytest.approx(expected, rel=1e-5)


def test_eager_attention_is_switched_on_inside_only_and_scores_do_not_change(tiny_groups):
    loaded = tiny_loaded("llama")
    loaded.model.set_attn_implementation("sdpa")
    ids = torch.tensor([_examples(loaded, tiny_groups)[0].prompt.input_ids])
    with torch.no_grad():
        fast = loaded.model(input_ids=ids).logits
        with eager_attention(loaded.model):
            assert loaded.model.config._attn_implementation == "eager"
            eager = loaded.model(input_ids=ids).logits
    assert loaded.model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-5)


def test_default_layers_are_study_001s_as_fractions_of_depth():
    """001 reads layers 0, 8, 16, 24, 31 of Phi-3's 32: the same fractions of any depth."""
    from relscope.analysis.settings import study_layers

    assert study_layers(32, hidden_states=True) == study_layers(32, hidden_states=False) == [0, 8, 16, 24, 31]
    assert study_layers(30, hidden_states=True) == [0, 8, 15, 22, 29]  # hidden states: 0 is the embeddings
    assert study_layers(30, hidden_states=False) == [0, 7, 15, 22, 29]  # attention layers 0..29
    assert study_layers(3, hidden_states=False) == [0, 1, 2]


def test_probe_and_attention_commands_base_vs_fine_tuned(tiny_family_dir, tiny_groups, tmp_path, capsys):
    from relscope.config import from_mapping
    from relscope.training.config import TrainConfig
    from relscope.training.job import run_train_job

    model = str(tiny_family_dir("llama"))
    config = from_mapping(TrainConfig, dict(model=model, train=[str(tiny_groups)], negatives=2, max_length=96,
                                            max_steps=3, batch_size=2, save_steps=3, learning_rate=5e-2,
                                            report_to=[], lora={"rank": 4}))
    run_train_job(config, tmp_path / "run", progress=False)
    adapter = str(tmp_path / "run" / "checkpoint-3")
    assert main(["probe", model, adapter, "--groups", str(tiny_groups), "--max-groups", "12", "--folds", "3",
                 "--out", str(tmp_path / "probe")]) == 0
    table = (tmp_path / "probe" / "probe.csv").read_text().splitlines()
    assert table[0].startswith("layer,base accuracy,fine-tuned accuracy") and len(table) == 1 + 4  # embeddings + 3
    assert {p.name for p in (tmp_path / "probe").glob("*.png")} == {"probe.png", "pca_base.png", "pca_fine_tuned.png"}

    assert main(["attention", model, adapter, "--groups", str(tiny_groups), "--max-groups", "3",
                 "--out", str(tmp_path / "att")]) == 0
    saved = np.load(tmp_path / "att" / "attention.npz")
    np.testing.assert_allclose(saved["change"], saved["fine_tuned"] - saved["base"])
    assert np.abs(saved["change"]).max() > 0  # the adapter changed the attention
    # the base half equals the plain base model, computed without any adapter
    from relscope.models.load import load_model

    plain = load_model(model)
    examples = labelled_prompts(read_groups(tiny_groups), PromptBuilder(plain.tokenizer, get_template("yes_no"), 256),
                                3, "any")
    direct = document_to_query_attention(plain.model, plain.spec, examples, [0, 1, 2], adapter=False)
    np.testing.assert_allclose(saved["base"], direct, atol=1e-6)
    assert json.loads((tmp_path / "att" / "manifest.json").read_text())["config"]["examples"] == 6
