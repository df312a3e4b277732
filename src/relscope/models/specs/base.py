"""ModelSpec: where a family keeps its layers, attention, MLP and projections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relscope.errors import ModelError
from relscope.registry import Registry

if TYPE_CHECKING:  # annotations only: the specs are plain data, and the CLI's --help reads them
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

# Family-independent projection names (what users write in LoRA targets and ablations).
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class ModelSpec:
    """Paths are dotted attribute paths; per-layer paths are relative to one decoder layer."""

    model_type: str
    backbone: str  # the decoder stack, whose output is the final-normed hidden state
    layers: str  # the ModuleList of decoder layers
    final_norm: str
    attention: str
    mlp: str
    # projection name -> module path inside a layer; q/k/v may share a fused module
    projections: dict[str, str] = field(default_factory=dict)
    fused_qkv: bool = False  # q, k, v are slices of one Linear (Phi-3, GPT-NeoX)
    fused_gate_up: bool = False  # gate and up are halves of one Linear (Phi-3)
    # GPT-NeoX interleaves q/k/v per head in its fused output; Phi-3 concatenates them.
    qkv_layout: str = "concat"
    activation: str = "mlp.act_fn"  # the MLP's elementwise nonlinearity, inside a layer (RelP's Identity rule)
    # The norms through which a layer's attention and MLP read the residual stream, and (Gemma 2/3's sandwich
    # norms) those their outputs pass before being added to it: the ends of a residual-stream edge (edges.py).
    attention_read_norm: str = "input_layernorm"
    mlp_read_norm: str = "post_attention_layernorm"
    attention_write_norm: str | None = None
    mlp_write_norm: str | None = None

    def resolve(self, root: nn.Module, path: str) -> nn.Module:
        """The submodule of `root` at dotted `path`; a ModelError names the missing part (a spec that does not fit)."""
        module = root
        for part in path.split("."):
            if not hasattr(module, part):
                raise ModelError(f"{self.model_type}: no module {path!r} ({part!r} missing); fix its ModelSpec")
            module = getattr(module, part)
        return module

    def backbone_of(self, model: nn.Module) -> nn.Module:
        """The decoder stack, whose output is the final-normed hidden state the heads read."""
        return self.resolve(model, self.backbone)

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers, in order (for per-layer LoRA, hooks and ablations)."""
        return self.resolve(model, self.layers)  # type: ignore[return-value]

    def attention_of(self, model: nn.Module, layer: int) -> nn.Module:
        """The self-attention module of decoder layer `layer`."""
        return self.resolve(self.layer_list(model)[layer], self.attention)

    def mlp_of(self, model: nn.Module, layer: int) -> nn.Module:
        """The MLP module of decoder layer `layer`."""
        return self.resolve(self.layer_list(model)[layer], self.mlp)

    def projection_of(self, model: nn.Module, layer: int, name: str) -> nn.Module:
        """The Linear of projection `name` (q, k, v, o, gate, up, down) in layer `layer`; fused ones are shared."""
        if name not in self.projections:
            have = ", ".join(self.projections)
            raise ModelError(f"{self.model_type} has no {name!r} projection; it has: {have}")
        return self.resolve(self.layer_list(model)[layer], self.projections[name])

    def activation_of(self, model: nn.Module, layer: int) -> nn.Module:
        """The MLP's activation module of decoder layer `layer` (SiLU, GELU...)."""
        return self.resolve(self.layer_list(model)[layer], self.activation)

    def module_names(self, name: str) -> str:
        """The leaf module name of a projection (what PEFT's target_modules matches)."""
        return self.projections[name].rsplit(".", 1)[-1]


SPECS: Registry[ModelSpec] = Registry("model family")


def get_spec(config: PretrainedConfig | PreTrainedModel) -> ModelSpec:
    """The spec for a model config (or a model, whose `.config` is used)."""
    config = getattr(config, "config", config)
    model_type = getattr(config, "model_type", None)
    if model_type not in SPECS:
        raise ModelError(
            f"model family {model_type!r} is not supported; supported: {', '.join(SPECS.names())}. "
            "Add a ModelSpec for it in relscope/models/specs/families.py"
        )
    return SPECS.get(model_type)


def num_layers(config: PretrainedConfig) -> int:
    """The number of decoder layers (of the text model, for multimodal configs)."""
    return int(config.get_text_config().num_hidden_layers)


def num_heads(config: PretrainedConfig) -> int:
    """The number of attention (query) heads per layer of the text model."""
    return int(config.get_text_config().num_attention_heads)


def num_kv_heads(config: PretrainedConfig) -> int:
    """The number of key/value heads per layer (fewer than query heads under grouped-query attention)."""
    text = config.get_text_config()
    return int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)


def head_dim(config: PretrainedConfig) -> int:
    """The width of one attention head."""
    text = config.get_text_config()
    return int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
