"""Where activations are read and written: forward hooks on the Hugging Face modules themselves (no reimplementation
of any model). A site is (component, layer); a patch overwrites given rows of a batch at given positions.

    resid_pre   the input of decoder layer l (the residual stream before it)
    resid_post  the output of decoder layer l
    attn        the attention block's output (after o_proj, before it is added to the residual)
    mlp         the MLP block's output (before it is added to the residual)
    z           the input of the attention output projection (o_proj): the heads' outputs side by side, so
                head h is columns h*head_dim:(h+1)*head_dim (per-head patching)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from relscope.errors import ConfigError
from relscope.models.specs import ModelSpec

COMPONENTS = ("resid_pre", "resid_post", "attn", "mlp")
PRE_HOOKED = ("resid_pre", "z")  # read from a module's input rather than its output


@dataclass(frozen=True)
class Edit:
    """Write `values` (len(positions), width) into batch row `row` at `positions` (and `columns`, for one head)."""

    row: int
    positions: torch.Tensor
    values: torch.Tensor
    columns: slice = field(default_factory=lambda: slice(None))


def target(model: nn.Module, spec: ModelSpec, component: str, layer: int) -> nn.Module:
    if component in ("resid_pre", "resid_post"):
        return spec.layer_list(model)[layer]
    if component == "attn":
        return spec.attention_of(model, layer)
    if component == "mlp":
        return spec.mlp_of(model, layer)
    if component == "z":
        return spec.projection_of(model, layer, "o")
    raise ConfigError(f"unknown patching component {component!r}; use one of {', '.join(COMPONENTS)}")


def _output_tensor(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_output(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _apply(tensor: torch.Tensor, edits: Sequence[Edit]) -> torch.Tensor:
    tensor = tensor.clone()  # the module's own output may be referenced elsewhere; never write into it
    for edit in edits:
        tensor[edit.row, edit.positions, edit.columns] = edit.values.to(tensor.dtype)
    return tensor


@contextmanager
def capturing(model: nn.Module, spec: ModelSpec, sites: Sequence[tuple[str, int]],
              store: dict[tuple[str, int], torch.Tensor]) -> Iterator[None]:
    """Record each site's activation (batch, seq, d_model) into `store` during the forwards inside."""
    with ExitStack() as stack:
        for component, layer in sites:
            module = target(model, spec, component, layer)
            key = (component, layer)
            if component in PRE_HOOKED:
                def pre(_module, args, kwargs, key=key):
                    store[key] = (args[0] if args else kwargs["hidden_states"]).detach()
                handle = module.register_forward_pre_hook(pre, with_kwargs=True)
            else:
                def post(_module, _args, output, key=key):
                    store[key] = _output_tensor(output).detach()
                handle = module.register_forward_hook(post)
            stack.callback(handle.remove)
        yield


@contextmanager
def patching(model: nn.Module, spec: ModelSpec, edits: Mapping[tuple[str, int], Sequence[Edit]]) -> Iterator[None]:
    """Overwrite activations at the given sites during the forwards inside; hooks are removed on exit."""
    with ExitStack() as stack:
        for (component, layer), site_edits in edits.items():
            if not site_edits:
                continue
            module = target(model, spec, component, layer)
            if component in PRE_HOOKED:
                def pre(_module, args, kwargs, site_edits=site_edits):
                    if args:
                        return (_apply(args[0], site_edits), *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": _apply(kwargs["hidden_states"], site_edits)}
                handle = module.register_forward_pre_hook(pre, with_kwargs=True)
            else:
                def post(_module, _args, output, site_edits=site_edits):
                    return _replace_output(output, _apply(_output_tensor(output), site_edits))
                handle = module.register_forward_hook(post)
            stack.callback(handle.remove)
        yield
