"""Attribution patching (AtP): the first-order estimate of every site's patching effect from one clean forward and
one corrupted forward + backward, whatever the number of sites:

    LD_patched(site) - LD_corrupted  ~=  sum over the site's positions of (a_clean - a_corrupted) . dLD/da

It is exact for a site whose effect is linear and an estimate elsewhere; use it to rank sites and run exact
patching on the top ones (`preselect`). Its agreement with exact patching is reported, not assumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from relscope.analysis.patching.engine import PairResult, PatchingEngine
from relscope.analysis.patching.hooks import capturing
from relscope.analysis.patching.pairs import PatchPair
from relscope.analysis.patching.sites import Site


@contextmanager
def _embeddings_require_grad(engine: PatchingEngine) -> Iterator[None]:
    """Make the embeddings a leaf that requires grad, so that a frozen (eval or PEFT-wrapped) model still builds the
    graph the site gradients are read from."""
    handle = engine.model.get_input_embeddings().register_forward_hook(
        lambda _m, _a, out: out.detach().requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()


def attribution_patching(engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site]) -> PairResult:
    """The AtP estimate for every site, as a PairResult whose `patched` is LD_corrupted + the estimate."""
    keys = sorted({s.key for s in sites})
    clean, ld_clean = engine.run(pair.clean, engine.activation_keys(sites))
    clean.update(engine.score_changes(pair, sites))  # a score patch's first-order effect: its change . dLD/dz
    store: dict = {}
    with torch.enable_grad(), _embeddings_require_grad(engine), \
            capturing(engine.model, engine.spec, keys, store, detach=False):
        hidden = engine.backbone(input_ids=engine.ids(pair.corrupted)).last_hidden_state[:, -1]
        ld_corrupted = engine.head(hidden)[0]
        grads = dict(zip(keys, torch.autograd.grad(ld_corrupted, [store[k] for k in keys])))
    engine.forwards += 1
    estimates = np.empty(len(sites))
    for i, site in enumerate(sites):
        where = engine.positions(pair.corrupted, site.rows)
        columns = engine.columns(site)
        if site.component == "scores":
            diff = clean[site][where]
        else:
            diff = clean[site.key][where][:, columns] - store[site.key][0, where][:, columns].detach()
        estimates[i] = float((diff * grads[site.key][0, where][:, columns]).sum())
    corrupted = float(ld_corrupted.detach())
    return PairResult(pair.qid, ld_clean, corrupted, corrupted + estimates)


def preselect(estimate: PairResult, sites: Sequence[Site], top: int) -> list[Site]:
    """The `top` sites by |AtP estimate|, to patch exactly."""
    order = np.argsort(-np.abs(estimate.patched - estimate.corrupted))[:top]
    return [sites[i] for i in sorted(order)]
