"""LoRA surgery is exact: ablating every update is the base model, ablating none is the adapter."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, tiny_loaded

from relscope.analysis.lora_surgery import (
    MODULE_PRESETS,
    adapted_sites,
    delta_stats,
    effective_rank,
    keep_only,
    parse_layers,
    select,
)
from relscope.errors import ConfigError
from relscope.models.heads import build_head
from relscope.models.scoring import Scorer
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder
from relscope.models.lora import LoraSettings
from relscope.models.lora import apply_lora


def _trained_like(family: str, seed: int = 0):
    """A tiny model with LoRA whose B matrices are random (as after training), plus prompts and a scorer."""
    loaded = tiny_loaded(family)
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no"), 128)
    prompts = [builder.build("capital of france", [t]) for t in ["Paris is the capital.", "The fox jumps."]]
    head = build_head("yes_no", loaded.model, builder)
    base_scores = Scorer(loaded.model, loaded.spec, head, 0, progress=False).score(prompts)
    peft_model, sites = apply_lora(loaded.model, loaded.spec, LoraSettings(rank=4))
    generator = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.5
    scorer = Scorer(peft_model, loaded.spec, head, 0, progress=False)
    return peft_model, loaded.spec, sites, prompts, scorer, base_scores


@pytest.mark.parametrize("family", FAMILIES)
def test_ablating_everything_is_the_base_model_and_nothing_is_the_adapter(family):
    peft_model, spec, sites, prompts, scorer, base_scores = _trained_like(family)
    base = peft_model.get_base_model()
    adapted = scorer.score(prompts)
    assert not torch.allclose(torch.from_numpy(adapted), torch.from_numpy(base_scores))
    with keep_only(base, []):
        assert torch.equal(torch.from_numpy(scorer.score(prompts)), torch.from_numpy(base_scores))
    with keep_only(base, adapted_sites(base, spec)):
        assert torch.equal(torch.from_numpy(scorer.score(prompts)), torch.from_numpy(adapted))
    assert torch.equal(torch.from_numpy(scorer.score(prompts)), torch.from_numpy(adapted))  # restored on exit


def test_partial_ablation_lies_between_and_is_restored_after_an_error():
    peft_model, spec, sites, prompts, scorer, base_scores = _trained_like("llama")
    base = peft_model.get_base_model()
    adapted = scorer.score(prompts)
    with pytest.raises(RuntimeError), keep_only(base, select(sites, MODULE_PRESETS["mlp-only"])):
        mlp_only = scorer.score(prompts)
        raise RuntimeError("interrupted")
    assert not torch.equal(torch.from_numpy(mlp_only), torch.from_numpy(adapted))
    assert not torch.equal(torch.from_numpy(mlp_only), torch.from_numpy(base_scores))
    assert torch.equal(torch.from_numpy(scorer.score(prompts)), torch.from_numpy(adapted))


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt_neox"])
def test_adapted_sites_are_recovered_from_the_module_paths(family):
    peft_model, spec, sites, *_ = _trained_like(family)
    assert adapted_sites(peft_model.get_base_model(), spec) == sites


def test_select_by_module_and_layer():
    peft_model, spec, sites, *_ = _trained_like("phi3")
    chosen = select(sites, ["up"], {0, 2})
    assert [(s.layer, s.label) for s in chosen] == [(0, "gate+up"), (2, "gate+up")]
    with pytest.raises(ConfigError, match="unknown module 'mlp'"):
        select(sites, ["mlp"])


@pytest.mark.parametrize("text,expected", [
    ("5-15", set(range(5, 16))),
    ("0-4+16-31", set(range(0, 5)) | set(range(16, 32))),
    ("7", {7}),
    ("0.5-1.0", set(range(16, 32))),
    ("0.0-0.25", set(range(0, 8))),
])
def test_parse_layers(text, expected):
    assert parse_layers(text, 32) == expected


@pytest.mark.parametrize("depth", [12, 16, 24, 26, 30, 32, 40])  # real depths; 3 layers cannot hold 4 parts
def test_the_default_fraction_ranges_partition_any_depth(depth):
    from relscope.analysis.settings import DEFAULT_VARIANTS

    middle, outside, late, early = (parse_layers(v.split("@")[1], depth) for v in DEFAULT_VARIANTS if "@" in v)
    assert middle | outside == set(range(depth)) and not middle & outside
    assert early | late == set(range(depth))


@pytest.mark.parametrize("text", ["5-40", "a-b", "-3"])
def test_parse_layers_rejects_bad_ranges(text):
    with pytest.raises(ConfigError, match="layers"):
        parse_layers(text, 32)


def test_delta_stats_match_the_explicit_product():
    peft_model, spec, sites, *_ = _trained_like("llama")
    base = peft_model.get_base_model()
    stats = delta_stats(base, sites[:1])[0]
    module = base.get_submodule(sites[0].path)
    with torch.no_grad():
        delta = module.lora_B["default"].weight @ module.lora_A["default"].weight * module.scaling["default"]
    assert stats.frobenius == pytest.approx(float(delta.norm()), rel=1e-5)
    assert len(stats.singular_values) == 4
    assert 1.0 <= stats.effective_rank <= 4.0


def test_effective_rank_of_known_spectra():
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert effective_rank(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(3)) == 0.0
