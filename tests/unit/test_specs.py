"""Every family's ModelSpec resolves on a tiny random model built from its config class."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, tiny_model

from relscope.errors import ModelError
from relscope.models.specs import get_spec
from relscope.models.specs.base import head_dim, num_heads, num_kv_heads, num_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_resolves_every_module(family):
    model = tiny_model(family)
    spec = get_spec(model)
    assert spec.model_type == family
    assert len(spec.layer_list(model)) == num_layers(model.config) == 3
    for layer in range(3):
        spec.attention_of(model, layer)
        spec.mlp_of(model, layer)
        for name, path in spec.projections.items():
            assert isinstance(spec.projection_of(model, layer, name), torch.nn.Linear), (name, path)
    o_proj = spec.projection_of(model, 0, "o")
    assert o_proj.in_features == num_heads(model.config) * head_dim(model.config)
    assert num_kv_heads(model.config) == (4 if family == "gpt_neox" else 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_output_is_what_the_lm_head_reads(family):
    model = tiny_model(family)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        hidden = get_spec(model).backbone_of(model)(input_ids=ids).last_hidden_state
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(model.lm_head(hidden) if hasattr(model, "lm_head") else model.embed_out(hidden),
                               logits, rtol=0, atol=0)


def test_fused_families_are_marked():
    assert get_spec(tiny_model("phi3")).fused_qkv and get_spec(tiny_model("phi3")).fused_gate_up
    assert get_spec(tiny_model("gpt_neox")).fused_qkv
    assert "gate" not in get_spec(tiny_model("gpt_neox")).projections


def test_unknown_family_names_the_fix():
    class Config:
        model_type = "mamba"

    with pytest.raises(ModelError, match="'mamba' is not supported.*families.py"):
        get_spec(Config())
