"""Family-independent LoRA targets, layer subsets and frozen groups, on tiny models of every family."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, tiny_loaded

from relscope.errors import ConfigError
from relscope.models.heads import build_head
from relscope.models.scoring import Scorer
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder
from relscope.models.lora import LoraSettings
from relscope.models.lora import apply_lora, layer_groups, lora_parameters, lora_sites, resolve_freeze


@pytest.mark.parametrize("family", FAMILIES)
def test_all_targets_wrap_exactly_the_resolved_modules(family):
    loaded = tiny_loaded(family)
    peft_model, sites = apply_lora(loaded.model, loaded.spec, LoraSettings(targets=("all",)))
    base = peft_model.get_base_model()
    wrapped = {name for name, m in base.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {s.path for s in sites}
    labels = {s.label for s in sites}
    if family == "phi3":
        assert labels == {"q+k+v", "o", "gate+up", "down"}
    elif family == "gpt_neox":
        assert labels == {"q+k+v", "o", "up", "down"}
    else:
        assert labels == {"q", "k", "v", "o", "gate", "up", "down"}


@pytest.mark.parametrize("targets,labels", [
    (("attn",), {"q", "k", "v", "o"}),
    (("mlp",), {"gate", "up", "down"}),
    (("up", "gate"), {"gate", "up"}),
    (("down", "q"), {"q", "down"}),
])
def test_target_groups_and_names(targets, labels):
    loaded = tiny_loaded("llama")
    assert {s.label for s in lora_sites(loaded.model, loaded.spec, LoraSettings(targets=targets))} == labels


def test_fused_phi3_maps_any_of_qkv_to_the_one_module(caplog):
    loaded = tiny_loaded("phi3")
    sites = lora_sites(loaded.model, loaded.spec, LoraSettings(targets=("q",)))
    assert [(s.label, s.path) for s in sites[:1]] == [("q", "model.layers.0.self_attn.qkv_proj")]
    assert "adapts all of them" in caplog.text


def test_layer_subset_and_negative_indices():
    loaded = tiny_loaded("llama")  # 3 layers
    sites = lora_sites(loaded.model, loaded.spec, LoraSettings(targets=("q",), layers=(0, -1)))
    assert [s.layer for s in sites] == [0, 2]


def test_bad_layers_name_the_key_and_the_range():
    loaded = tiny_loaded("llama")
    with pytest.raises(ConfigError) as err:
        lora_sites(loaded.model, loaded.spec, LoraSettings(layers=(3,)))
    assert all(w in str(err.value) for w in ["layer 3 is out of range", "3 layers"])


def test_an_unknown_freeze_group_is_refused_when_the_settings_are_made():
    with pytest.raises(ValueError) as err:
        LoraSettings(freeze=("top",))
    assert all(w in str(err.value) for w in ["freeze", "'top'", "early, middle, late"])


def test_gate_on_a_family_without_one_is_an_error():
    loaded = tiny_loaded("gpt_neox")
    with pytest.raises(ConfigError, match="gpt_neox has no 'gate'"):
        lora_sites(loaded.model, loaded.spec, LoraSettings(targets=("gate",)))


@pytest.mark.parametrize("bad,words", [({"rank": 0}, "rank"), ({"targets": ("qq",)}, "'qq'"), ({"dropout": 1.0}, "dropout")])
def test_bad_settings_fail_at_construction(bad, words):
    with pytest.raises(ValueError, match=words):
        LoraSettings(**bad)


def test_layer_groups_are_thirds():
    assert layer_groups(30) == {"early": list(range(10)), "middle": list(range(10, 20)), "late": list(range(20, 30))}
    assert layer_groups(4) == {"early": [0, 1], "middle": [2], "late": [3]}
    assert resolve_freeze(("late", "0"), 30) == set(range(20, 30)) | {0}


def test_freeze_stops_gradients_of_the_frozen_layers_only():
    loaded = tiny_loaded("llama")
    peft_model, sites = apply_lora(loaded.model, loaded.spec, LoraSettings(freeze=("early",)))
    base = peft_model.get_base_model()
    for site in sites:
        assert all(p.requires_grad == (site.layer != 0) for p in lora_parameters(base, site))


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_lora_is_the_base_model(family):
    """B starts at zero: wrapping changes no score (the 'zero LoRA delta => base model' invariant)."""
    loaded = tiny_loaded(family)
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no"), 128)
    prompts = [builder.build("capital of france", [t]) for t in ["Paris is the capital.", "The fox jumps."]]
    head = build_head("yes_no", loaded.model, builder)
    before = Scorer(loaded.model, loaded.spec, head, 0, progress=False).score(prompts)
    peft_model, _ = apply_lora(loaded.model, loaded.spec, LoraSettings())
    after = Scorer(peft_model, loaded.spec, head, 0, progress=False).score(prompts)
    assert torch.equal(torch.from_numpy(before), torch.from_numpy(after))


def test_layer_groups_split_as_numpy_array_split_does():  # written without numpy so that --help stays light
    import numpy as np

    for n in range(0, 70):
        thirds = [chunk.tolist() for chunk in np.array_split(np.arange(n), 3)]
        assert list(layer_groups(n).values()) == thirds, n
