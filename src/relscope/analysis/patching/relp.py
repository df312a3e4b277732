"""Relevance patching (RelP; Jafari, Eberle, Khakzar & Nanda 2025, arXiv:2508.21258): attribution patching with the
gradient replaced by the propagation coefficients of layer-wise relevance propagation (LRP), at AtP's cost:

    LD_patched(site) - LD_corrupted  ~=  (a_clean - a_corrupted) . rho_a(corrupted run)

rho is the gradient of a network whose forward is unchanged (bit for bit: tested) and whose backward follows the LRP
rules RelP uses at the nonlinear modules; linear layers, LoRA branches and residual additions keep the plain
gradient (LRP's 0-rule). The rules, as RelP's code and LRP-eXplains-Transformers apply them in their
Gradient x Input form:

- LN-rule (norm): every LayerNorm / RMSNorm, the final one included, is linear with its scale held constant:
  d/dx [x * w / rms(x)] read as w / rms(x) (RMSNorm), (x - mean x) * w / sigma (LayerNorm, centring kept);
- Identity rule (activation): the MLP's SiLU / GELU is x * (act(x) / x) with the ratio held constant;
- Half rule (gated MLP): the gate * up product's gradient is halved, so that each factor gets half;
- AH-rule (attention): the attention weights are constants, so no gradient goes through the queries and keys.

Together they conserve relevance: with no biases anywhere, sum(h * rho) over every position and feature of the
residual stream at any layer equals LD (tested on the bias-free tiny families); that is what makes the estimate
faithful where the plain gradient of a saturated norm, gate or softmax is not.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from relscope.analysis.patching.atp import attribution_patching
from relscope.analysis.patching.engine import PairResult, PatchingEngine
from relscope.analysis.patching.pairs import PatchPair
from relscope.analysis.patching.sites import LRP_RULES, Site
from relscope.errors import ModelError
from relscope.models.specs import ModelSpec

CONSTANT_WEIGHTS = "relscope_constant_weights_"  # + the model's own attention implementation


def through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """`value` in the forward (exactly: surrogate - surrogate is 0), the surrogate's gradient in the backward."""
    return value.detach() + (surrogate - surrogate.detach()).to(value.dtype)


def scaled_gradient(value: torch.Tensor, factor: float) -> torch.Tensor:
    """`value` in the forward, its gradient times `factor` in the backward."""
    return value.detach() + factor * (value - value.detach())


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least (as the norms compute), float64 kept."""
    return x if x.dtype == torch.float64 else x.float()


def norm_surrogate(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm as a linear map of x, its scale from x held constant (the LN-rule); a ModelError for a norm whose
    formula relscope does not know (a guess would silently change every estimate)."""
    h = _wide(x)
    if isinstance(module, nn.LayerNorm):
        centred = h - h.mean(-1, keepdim=True)
        scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + module.eps).detach()
        weight = module.weight.to(h.dtype) if module.weight is not None else 1.0
        bias = module.bias.to(h.dtype) if module.bias is not None else 0.0
        return centred * scale * weight + bias
    name = type(module).__name__
    eps = getattr(module, "variance_epsilon", None)
    weight = module.weight.to(h.dtype) if eps is not None else None
    if eps is None and name.startswith("Gemma") and hasattr(module, "eps"):
        eps, weight = module.eps, 1.0 + module.weight.to(h.dtype)  # Gemma's RMSNorm scales by (1 + w)
    if eps is None:
        raise ModelError(f"RelP has no LN-rule for the norm {name}; add its formula to relp.norm_surrogate")
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps).detach() * weight


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _norm_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return through(output, norm_surrogate(module, args[0]))


def _activation_hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    x = _wide(args[0])
    # act(x)/x -> act'(0) = 1/2 at 0 for SiLU and both GELUs (x * sigmoid-like gates), the activations of the
    # supported families
    ratio = torch.where(x == 0, torch.full_like(x, 0.5), _wide(output) / torch.where(x == 0, 1.0, x))
    return through(output, x * ratio.detach())


def _half_hook(_module: nn.Module, args: tuple) -> tuple:
    return (scaled_gradient(args[0], 0.5), *args[1:])


def _constant_weights_attention(inner: str, module, query, key, value, attention_mask, **kwargs):
    """The model's own attention with the queries and keys cut from the backward (the AH-rule)."""
    if inner == "eager":
        function = sys.modules[type(module).__module__].eager_attention_forward
    else:
        function = AttentionInterface._global_mapping[inner]
    return function(module, query.detach(), key.detach(), value, attention_mask, **kwargs)


@contextmanager
def _constant_attention_weights(model: nn.Module) -> Iterator[None]:
    """The model's attention implementation (eager, sdpa...) run with detached queries and keys, its own mask kept."""
    inner = model.config._attn_implementation
    if inner != "eager" and inner not in AttentionInterface._global_mapping:
        raise ModelError(f"RelP cannot wrap the attention implementation {inner!r}; load the model with sdpa or eager")
    name = CONSTANT_WEIGHTS + inner
    AttentionInterface.register(name, partial(_constant_weights_attention, inner))
    AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[inner])
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(inner)


@contextmanager
def lrp_rules(model: nn.Module, spec: ModelSpec, rules: Sequence[str] = LRP_RULES) -> Iterator[None]:
    """Inside, backward passes follow the chosen LRP rules (module docstring); forwards are unchanged. Hooks on the
    model's own modules, all removed (and the attention implementation restored) on exit."""
    with ExitStack() as stack:
        layers = range(len(spec.layer_list(model)))
        if "norm" in rules:
            for module in {id(m): m for m in spec.backbone_of(model).modules() if _is_norm(m)}.values():
                stack.callback(module.register_forward_hook(_norm_hook).remove)
        if "activation" in rules:
            for module in {id(m): m for m in (spec.activation_of(model, i) for i in layers)}.values():
                stack.callback(module.register_forward_hook(_activation_hook).remove)
        if "gate" in rules and "gate" in spec.projections:  # gated MLP: act(gate) * up enters the down projection
            for layer in layers:
                down = spec.projection_of(model, layer, "down")
                stack.callback(down.register_forward_pre_hook(_half_hook).remove)
        if "attention" in rules:
            stack.enter_context(_constant_attention_weights(model))
        yield


def relevance_patching(engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site],
                       rules: Sequence[str] = LRP_RULES) -> PairResult:
    """The RelP estimate for every site: attribution patching's passes with the LRP rules on."""
    with lrp_rules(engine.model, engine.spec, rules):
        return attribution_patching(engine, pair, sites)
