"""Attribution patching (AtP): the first-order estimate of every site's patching effect from one clean forward and
one corrupted forward + backward, whatever the number of sites:

    LD_patched(site) - LD_corrupted  ~=  sum over the site's positions of (a_clean - a_corrupted) . dLD/da

It is exact for a site whose effect is linear and an estimate elsewhere; use it to rank sites and run exact
patching on the top ones (`preselect`). Its agreement with exact patching is reported, not assumed. The other
estimators (integrated gradients, ig.py) keep this form and change only the gradient, so they share
`first_order_estimates`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from relscope.analysis.patching.engine import PairResult, PatchingEngine
from relscope.analysis.patching.hooks import capturing
from relscope.analysis.patching.pairs import PatchPair
from relscope.analysis.patching.sites import ATTENTION_EDITS, Site

if TYPE_CHECKING:
    from relscope.prompts.tokenize import TokenizedPrompt


@contextmanager
def embeddings_output(engine: PatchingEngine, replace: torch.Tensor | None = None) -> Iterator[None]:
    """Make the embeddings' output a leaf that requires grad, so that a frozen (eval or PEFT-wrapped) model still
    builds the graph the site gradients are read from; with `replace`, that leaf is `replace` instead (integrated
    gradients run interpolated embeddings through the model)."""
    def leaf(_module, _args, out):
        source = out if replace is None else replace.to(out.dtype)
        return source.detach().requires_grad_(True)

    handle = engine.model.get_input_embeddings().register_forward_hook(leaf)
    try:
        yield
    finally:
        handle.remove()


def clean_side(engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site],
               qk_fix: bool = False) -> tuple[dict, float]:
    """The clean run's site activations (and each score, query or key site's change of its head outputs) and
    LD_clean. A query or key site's change is its first-order one (plain AtP: the gradient through the softmax), or
    with `qk_fix` the exact one (AtP*'s QK fix: the softmax recomputed, linear only after it)."""
    clean, ld_clean = engine.run(pair.clean, engine.activation_keys(sites))
    # such a site's estimate is then its change . dLD/dz
    clean.update(engine.attention_changes(pair, sites, linear=not qk_fix))
    return clean, ld_clean


def first_order_estimates(engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site], clean: Mapping,
                          corrupted: Mapping[tuple[str, int], torch.Tensor],
                          grads: Mapping[tuple[str, int], torch.Tensor]) -> np.ndarray:
    """(sites,) sum over each site's positions and columns of (a_clean - a_corrupted) . gradient: `corrupted` and
    `grads` map (component, layer) to (seq, width) tensors of the corrupted run and of the estimator's gradient."""
    estimates = np.empty(len(sites))
    positions = {g: engine.positions(pair.corrupted, g) for g in {s.rows for s in sites}}  # once per group
    for i, site in enumerate(sites):
        where = positions[site.rows]
        columns = engine.columns(site)
        if site.component in ATTENTION_EDITS:
            diff = clean[site][where]
        else:
            diff = clean[site.key][where][:, columns] - corrupted[site.key][where][:, columns]
        estimates[i] = float((diff.float() * grads[site.key][where][:, columns].float()).sum())  # not in bf16
    return estimates


def gradient_run(engine: PatchingEngine, prompt: TokenizedPrompt, keys: Sequence[tuple[str, int]],
                 wrt: Sequence[tuple[str, int]]) -> tuple[dict, dict, float]:
    """One forward + backward of one prompt: each of `keys`' (seq, width) activation, dLD/da for each of `wrt` (a
    subset of `keys`), and LD."""
    store: dict = {}
    with torch.enable_grad(), embeddings_output(engine), \
            capturing(engine.model, engine.spec, keys, store, detach=False):
        hidden = engine.backbone(input_ids=engine.ids(prompt)).last_hidden_state[:, -1]
        logit_diff = engine.head(hidden)[0]
        grads = dict(zip(wrt, (g[0] for g in torch.autograd.grad(logit_diff, [store[k] for k in wrt]))))
    engine.forwards += 1
    return {k: store[k][0].detach() for k in keys}, grads, float(logit_diff.detach())


def attribution_patching(engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site],
                         qk_fix: bool = False) -> PairResult:
    """The AtP estimate for every site, as a PairResult whose `patched` is LD_corrupted + the estimate; with
    `qk_fix`, query and key sites get AtP*'s QK fix (see clean_side)."""
    keys = sorted({s.key for s in sites})
    clean, ld_clean = clean_side(engine, pair, sites, qk_fix)
    corrupted, grads, ld = gradient_run(engine, pair.corrupted, keys, keys)
    estimates = first_order_estimates(engine, pair, sites, clean, corrupted, grads)
    return PairResult(pair.qid, ld_clean, ld, ld + estimates)


def preselect(estimate: PairResult, sites: Sequence[Site], top: int) -> list[Site]:
    """The `top` sites by |AtP estimate|, to patch exactly."""
    order = np.argsort(-np.abs(estimate.patched - estimate.corrupted))[:top]
    return [sites[i] for i in sorted(order)]
