"""Attribution patching (AtP): the first-order estimate of every site's patching effect from one clean forward and
one corrupted forward + backward, whatever the number of sites:

    LD_patched(site) - LD_corrupted  ~=  sum over the site's positions of (a_clean - a_corrupted) . dLD/da

It is exact for a site whose effect is linear and an estimate elsewhere; use it to rank sites and run exact
patching on the top ones (`preselect`). Its agreement with exact patching is reported, not assumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import numpy as np
import torch

from relscope.analysis.patching.engine import PairResult, PatchingEngine, Site
from relscope.analysis.patching.hooks import PRE_HOOKED, target
from relscope.analysis.patching.pairs import PatchPair


@contextmanager
def _recording_with_grad(engine: PatchingEngine, keys, store: dict) -> Iterator[None]:
    """Keep each site's activation inside the autograd graph; the embeddings are made to require grad so that a
    frozen (PEFT-wrapped or eval) model still has a graph to differentiate."""
    with ExitStack() as stack:
        embed = engine.model.get_input_embeddings()
        handle = embed.register_forward_hook(lambda _m, _a, out: out.detach().requires_grad_(True))
        stack.callback(handle.remove)
        for component, layer in keys:
            module, key = target(engine.model, engine.spec, component, layer), (component, layer)
            if component in PRE_HOOKED:
                def pre(_m, args, kwargs, key=key):
                    store[key] = args[0] if args else kwargs["hidden_states"]
                handle = module.register_forward_pre_hook(pre, with_kwargs=True)
            else:
                def post(_m, _a, output, key=key):
                    store[key] = output[0] if isinstance(output, tuple) else output
                handle = module.register_forward_hook(post)
            stack.callback(handle.remove)
        yield


def attribution_patching(engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site]) -> PairResult:
    """The AtP estimate for every site, as a PairResult whose `patched` is LD_corrupted + the estimate."""
    keys = sorted({s.key for s in sites})
    clean = engine.activations(pair.clean, keys)
    store: dict = {}
    with torch.enable_grad(), _recording_with_grad(engine, keys, store):
        hidden = engine.backbone(input_ids=engine._ids(pair.corrupted)).last_hidden_state[:, -1]
        ld_corrupted = engine.head(hidden)[0]
        grads = dict(zip(keys, torch.autograd.grad(ld_corrupted, [store[k] for k in keys])))
    engine.forwards += 1
    estimates = np.empty(len(sites))
    for i, site in enumerate(sites):
        where = torch.tensor(pair.corrupted.positions(site.group), device=engine.device, dtype=torch.long)
        columns = slice(None) if site.head is None else slice(site.head * engine.head_dim,
                                                               (site.head + 1) * engine.head_dim)
        diff = clean[site.key][where][:, columns] - store[site.key][0, where][:, columns].detach()
        estimates[i] = float((diff * grads[site.key][0, where][:, columns]).sum())
    ld_clean = float(engine.logit_diffs(engine._ids(pair.clean))[0])
    corrupted = float(ld_corrupted.detach())
    return PairResult(pair.qid, ld_clean, corrupted, corrupted + estimates)


def preselect(estimate: PairResult, sites: Sequence[Site], top: int) -> list[Site]:
    """The `top` sites by |AtP estimate|, to patch exactly."""
    order = np.argsort(-np.abs(estimate.patched - estimate.corrupted))[:top]
    return [sites[i] for i in sorted(order)]
