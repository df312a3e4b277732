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

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from relscope.analysis.patching.sites import COMPONENTS
from relscope.errors import ConfigError
from relscope.models.specs import ModelSpec

PRE_HOOKED = ("resid_pre", "z")  # read from a module's input rather than its output


@dataclass(frozen=True)
class Edit:
    """Write `values` (len(positions), width) into batch row `row` at `positions` (and `columns`, for one head);
    add them instead when `add` (an attention-score patch is a change of the head's output)."""

    row: int
    positions: torch.Tensor
    values: torch.Tensor
    columns: slice = field(default_factory=lambda: slice(None))
    add: bool = False


def target(model: nn.Module, spec: ModelSpec, component: str, layer: int) -> nn.Module:
    """The module whose input or output is the (component, layer) activation; a ConfigError names the components."""
    if component in ("resid_pre", "resid_post"):
        return spec.layer_list(model)[layer]
    if component == "attn":
        return spec.attention_of(model, layer)
    if component == "mlp":
        return spec.mlp_of(model, layer)
    if component == "z":
        return spec.projection_of(model, layer, "o")
    raise ConfigError(f"unknown patching component {component!r}; use one of {', '.join(COMPONENTS)}")


def _apply(tensor: torch.Tensor, edits: Sequence[Edit]) -> torch.Tensor:
    tensor = tensor.clone()  # the module's own output may be referenced elsewhere; never write into it
    for edit in edits:
        if edit.add:
            tensor[edit.row, edit.positions, edit.columns] += edit.values.to(tensor.dtype)
        else:
            tensor[edit.row, edit.positions, edit.columns] = edit.values.to(tensor.dtype)
    return tensor


def _hook_site(module: nn.Module, component: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Show `fn` the site's activation (a module's input for PRE_HOOKED components, else its output, the first
    element when the module returns a tuple); a tensor `fn` returns takes the activation's place."""
    if component in PRE_HOOKED:
        def pre(_module, args, kwargs):
            new = fn(args[0] if args else kwargs["hidden_states"])
            if new is None:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(_module, _args, output):
        new = fn(output[0] if isinstance(output, tuple) else output)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return module.register_forward_hook(post)


@contextmanager
def site_hooks(model: nn.Module, spec: ModelSpec,
               fns: Mapping[tuple[str, int], Callable[[torch.Tensor], torch.Tensor | None]]) -> Iterator[None]:
    """One hook per (component, layer) during the forwards inside; all removed on exit."""
    with ExitStack() as stack:
        for (component, layer), fn in fns.items():
            stack.callback(_hook_site(target(model, spec, component, layer), component, fn).remove)
        yield


def capturing(model: nn.Module, spec: ModelSpec, sites: Sequence[tuple[str, int]],
              store: dict[tuple[str, int], torch.Tensor], detach: bool = True) -> AbstractContextManager[None]:
    """Record each site's activation (batch, seq, d_model) into `store` during the forwards inside
    (detach=False keeps it in the autograd graph, for gradients with respect to it)."""
    def keep(key):
        return lambda tensor: store.__setitem__(key, tensor.detach() if detach else tensor)
    return site_hooks(model, spec, {key: keep(key) for key in sites})


def patching(model: nn.Module, spec: ModelSpec,
             edits: Mapping[tuple[str, int], Sequence[Edit]]) -> AbstractContextManager[None]:
    """Overwrite activations at the given sites during the forwards inside; hooks are removed on exit."""
    def apply(site_edits):
        return lambda tensor: _apply(tensor, site_edits)
    return site_hooks(model, spec, {key: apply(site_edits) for key, site_edits in edits.items() if site_edits})
