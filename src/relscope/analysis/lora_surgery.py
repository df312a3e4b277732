"""LoRA surgery: keep the update in chosen modules only, and measure each module's update.

Ablation is exact: a module whose update is dropped gets its LoRA scaling set to 0, so
its output is the base layer's output plus an exact zero. Nothing is merged or copied,
and the scalings are restored when the context ends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from relscope.errors import ConfigError
from relscope.models.lora import LoraSite
from relscope.models.specs import ModelSpec
from relscope.models.specs.base import PROJECTIONS

# The source study's Table 3 (which components keep their update) and Table 4 (which MLP projections).
MODULE_PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "attn-only": ("q", "k", "v", "o"),
    "mlp-only": ("gate", "up", "down"),
    "all": PROJECTIONS,
    "up+gate": ("gate", "up"),
    "down": ("down",),
}


def adapted_sites(base: nn.Module, spec: ModelSpec) -> list[LoraSite]:
    """Every LoRA-wrapped module of a (PEFT-injected) base model, labelled through the spec.

    Works for any PEFT LoRA adapter, ours or external: the labels come from the module paths.
    """
    by_suffix: dict[str, list[str]] = {}
    for name, rel in spec.projections.items():
        by_suffix.setdefault(rel, []).append(name)
    pattern = re.compile(rf"^{re.escape(spec.layers)}\.(\d+)\.(.+)$")
    sites = []
    for path, module in base.named_modules():
        match = pattern.match(path)
        if match and hasattr(module, "lora_A") and match.group(2) in by_suffix:
            sites.append(LoraSite(int(match.group(1)), "+".join(by_suffix[match.group(2)]), path))
    return sorted(sites, key=lambda s: (s.layer, PROJECTIONS.index(s.label.split("+")[0])))  # as lora_sites


def parse_layers(text: str, n_layers: int) -> set[int]:
    """'5-15', '0-4+16-31', '7', or fractions of depth '0.5-1.0' (end exclusive for fractions).

    Fraction bounds round to the nearest layer boundary, so complementary fractions partition any depth
    (0.15625-0.5 and 0.0-0.15625+0.5-1.0 are 5-15 and 0-4+16-31 on 32 layers, 5-14 and 0-4+15-29 on 30)."""
    layers: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split("+"))):
        low, _, high = part.partition("-")
        try:
            if "." in part:  # fractions transfer across depths: 0.0-0.5 is the first half of any model
                start, stop = (math.floor(float(x) * n_layers + 0.5) for x in (low, high or low))
                chosen = range(start, max(stop, start + 1))
            else:
                chosen = range(int(low), int(high or low) + 1)
        except ValueError:
            raise ConfigError(f"layers {text!r}: {part!r} is not a range like 5-15, 7 or 0.5-1.0") from None
        if not chosen or chosen.start < 0 or chosen.stop > n_layers:
            raise ConfigError(f"layers {text!r}: {part!r} is outside 0..{n_layers - 1} (the model has {n_layers} "
                              "layers); use indices in that range or fractions of depth such as 0.5-1.0")
        layers |= set(chosen)
    return layers


def select(sites: Iterable[LoraSite], modules: Iterable[str] | None = None,
           layers: set[int] | None = None) -> list[LoraSite]:
    """Sites whose module label shares a projection with `modules` and whose layer is in `layers`."""
    wanted = set(modules) if modules is not None else set(PROJECTIONS)
    unknown = wanted - set(PROJECTIONS)
    if unknown:
        raise ConfigError(f"unknown module {sorted(unknown)[0]!r}; use {', '.join(PROJECTIONS)}")
    return [s for s in sites if wanted & set(s.label.split("+")) and (layers is None or s.layer in layers)]


@contextmanager
def keep_only(base: nn.Module, keep: Iterable[LoraSite]) -> Iterator[None]:
    """Within the context, every LoRA update outside `keep` is exactly zero."""
    kept = {s.path for s in keep}
    saved: list[tuple[nn.Module, dict]] = []
    try:
        for path, module in base.named_modules():
            if hasattr(module, "lora_A") and hasattr(module, "scaling") and path not in kept:
                saved.append((module, dict(module.scaling)))
                for adapter in module.scaling:
                    module.scaling[adapter] = 0.0
        yield
    finally:
        for module, scaling in saved:
            module.scaling.update(scaling)


@dataclass(frozen=True)
class DeltaStats:
    layer: int
    label: str
    frobenius: float  # ||scale * B A||_F
    singular_values: tuple[float, ...]
    effective_rank: float  # exp(entropy of the normalised singular values) (Roy & Vetterli 2007)


@torch.no_grad()
def delta_stats(base: nn.Module, sites: Iterable[LoraSite]) -> list[DeltaStats]:
    """The update each site's adapter adds to its weight, delta W = scale * B @ A, summarised."""
    out = []
    for site in sites:
        module = base.get_submodule(site.path)
        for adapter in module.lora_A:
            delta = module.get_delta_weight(adapter).float()
            values = torch.linalg.svdvals(delta)
            rank_r = module.r[adapter]
            values = values[:rank_r]  # beyond the LoRA rank the values are numerical zeros
            out.append(DeltaStats(site.layer, site.label, float(torch.linalg.matrix_norm(delta)),
                                  tuple(values.tolist()), effective_rank(values)))
    return out


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values): how many directions the update really uses (0 if none)."""
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
