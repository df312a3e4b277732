"""LoRA through PEFT, addressed by family-independent names.

Users write targets as q k v o gate up down (or attn, mlp, all), layers as indices and
frozen groups as early / middle / late. ModelSpec turns these into exact module paths,
so the same config adapts Llama, Pythia or Phi-3 (whose fused qkv_proj / gate_up_proj
are one module each: asking for any of q, k, v adapts the fused module).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relscope.errors import ConfigError, is_finite_number
from relscope.models.specs import ModelSpec
from relscope.models.specs.base import PROJECTIONS, num_layers

if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn

log = logging.getLogger(__name__)

TARGET_GROUPS = {"attn": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down"), "all": PROJECTIONS}
LAYER_GROUPS = ("early", "middle", "late")


@dataclass(frozen=True)
class LoraSite:
    """One adapted module: its layer, its label (q, ..., or q+k+v when fused) and its path in the base model."""

    layer: int
    label: str
    path: str


def expand_targets(targets: Sequence[str], spec: ModelSpec) -> tuple[str, ...]:
    """Projection names in canonical order. Groups skip projections the family lacks (Pythia has no gate)."""
    wanted: set[str] = set()
    for name in targets:
        if name in TARGET_GROUPS:
            wanted |= {p for p in TARGET_GROUPS[name] if p in spec.projections}
        elif name in PROJECTIONS:
            if name not in spec.projections:
                raise ConfigError(f"lora.targets: {spec.model_type} has no {name!r} projection; "
                                  f"it has: {', '.join(spec.projections)}")
            wanted.add(name)
        else:
            raise ConfigError(f"lora.targets: unknown target module {name!r}; use "
                              f"{', '.join(PROJECTIONS)} or the groups {', '.join(TARGET_GROUPS)}")
    return tuple(p for p in PROJECTIONS if p in wanted)


def layer_groups(n_layers: int) -> dict[str, list[int]]:
    """early / middle / late: the stack split into thirds (the first ones one larger when n % 3 != 0)."""
    size, extra = divmod(n_layers, 3)  # numpy.array_split's rule, without importing numpy for the CLI's --help
    groups, start = {}, 0
    for i, name in enumerate(LAYER_GROUPS):
        end = start + size + (i < extra)
        groups[name], start = list(range(start, end)), end
    return groups


def resolve_layers(layers: Sequence[int] | None, n_layers: int, key: str = "lora.layers") -> list[int]:
    """Layer indices (negative ones from the end) as sorted distinct 0-based ones; None means every layer."""
    if layers is None:
        return list(range(n_layers))
    resolved = []
    for index in layers:
        if not -n_layers <= index < n_layers:
            raise ConfigError(f"{key}: layer {index} is out of range; the model has {n_layers} layers "
                              f"(0..{n_layers - 1}, or -1..-{n_layers} from the end)")
        resolved.append(index % n_layers)
    return sorted(set(resolved))


def resolve_freeze(freeze: Sequence[str], n_layers: int) -> set[int]:
    """The layers whose LoRA stays at zero, from group names (early, middle, late) and layer indices."""
    groups = layer_groups(n_layers)
    frozen: set[int] = set()
    for item in freeze:
        if item in groups:
            frozen |= set(groups[item])
        elif item.lstrip("-").isdigit():
            frozen |= set(resolve_layers([int(item)], n_layers, "lora.freeze"))
        else:
            raise ConfigError(f"lora.freeze: {item!r} is neither a layer group ({', '.join(LAYER_GROUPS)}) "
                              "nor a layer index")
    return frozen


def lora_sites(model: nn.Module, spec: ModelSpec, settings: LoraSettings) -> list[LoraSite]:
    """Every module LoRA wraps, in layer order; fused modules appear once."""
    n_layers = num_layers(model.config)
    projections = expand_targets(settings.targets, spec)
    _warn_partial_fusion(spec, projections)
    layers_path = spec.layers
    by_path: dict[str, list[str]] = {}  # module path in a layer -> the projections it holds
    for name in projections:
        by_path.setdefault(spec.projections[name], []).append(name)
    sites = []
    for layer in resolve_layers(settings.layers, n_layers):
        for rel, names in by_path.items():
            sites.append(LoraSite(layer, "+".join(names), f"{layers_path}.{layer}.{rel}"))
    return sites


def apply_lora(model: nn.Module, spec: ModelSpec, settings: LoraSettings) -> tuple[PeftModel, list[LoraSite]]:
    """Wrap `model` in a PeftModel with LoRA on exactly the resolved sites; frozen layers keep B = 0."""
    from peft import LoraConfig, get_peft_model

    sites = lora_sites(model, spec, settings)
    config = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias="none",
        target_modules=[s.path for s in sites],
    )
    was_training = model.training
    peft_model = get_peft_model(model, config)
    peft_model.train(was_training)  # new dropout modules start in train mode: keep an eval model in eval
    frozen = resolve_freeze(settings.freeze, num_layers(model.config))
    base = peft_model.get_base_model()
    for site in sites:
        if site.layer in frozen:
            for param in lora_parameters(base, site):
                param.requires_grad_(False)
    return peft_model, sites


def lora_parameters(base: nn.Module, site: LoraSite) -> list[nn.Parameter]:
    """The A and B matrices of one site (every adapter name)."""
    module = base.get_submodule(site.path)
    return [p for name, p in module.named_parameters() if name.startswith(("lora_A", "lora_B"))]


def _warn_partial_fusion(spec: ModelSpec, projections: Sequence[str]) -> None:
    fused = [("q", "k", "v")] * spec.fused_qkv + [("gate", "up")] * spec.fused_gate_up
    for group in fused:
        chosen = [p for p in group if p in projections]
        if chosen and len(chosen) < len(group):
            log.warning("%s fuses %s into one module: LoRA on %s adapts all of them",
                        spec.model_type, "/".join(group), "/".join(chosen))



@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    # Family-independent names: q k v o gate up down, or the groups attn, mlp, all.
    targets: tuple[str, ...] = ("all",)
    # Layer indices that get LoRA (None: all); negative indices count from the end.
    layers: tuple[int, ...] | None = None
    # Layers whose LoRA weights stay at their initial value (B = 0, so no update):
    # the groups early / middle / late (thirds of the stack) or layer indices as strings.
    freeze: tuple[str, ...] = ()
    quantize_4bit: bool = False  # QLoRA: needs CUDA and bitsandbytes

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank}")
        if not is_finite_number(self.alpha) or self.alpha <= 0:
            raise ValueError(f"lora.alpha must be a finite number > 0, got {self.alpha}")
        if not is_finite_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        from relscope.models.lora import LAYER_GROUPS

        odd = [f for f in self.freeze if f not in LAYER_GROUPS and not re.fullmatch(r"-?[0-9]+", f)]
        if odd:  # the layer range itself needs the model's depth: checked when it loads
            raise ValueError(f"lora.freeze: {odd[0]!r} is neither a layer group ({', '.join(LAYER_GROUPS)}) nor a "
                             "layer index")
        known = ("q", "k", "v", "o", "gate", "up", "down", "attn", "mlp", "all")
        unknown = [t for t in self.targets if t not in known]
        if not self.targets or unknown:
            problem = f"unknown target module {unknown[0]!r}" if unknown else "targets is empty"
            raise ValueError(f"targets: {problem}; use {', '.join(known[:7])} or the groups attn, mlp, all")
