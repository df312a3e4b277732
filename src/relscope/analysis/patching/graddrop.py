"""GradDrop, AtP*'s remedy for cancellation (Kramár, Lieberum, Shah & Nanda 2024, "AtP*", arXiv:2403.00745):
attribution patching repeated with the backward cut at one layer's residual writes at a time, the absolute
estimates averaged:

    c(n) = 1/(L - 1) sum over layers l of |(a_clean - a_corrupted) . dLD^(l)/da|

where dLD^(l) is the gradient with layer l's attention and MLP writes into the residual stream cut (their forward
unchanged). A site whose effects cancel along one path and add along another gets a large c where AtP's signed sum
is near 0: AtP* uses it to rank sites for exact patching, not as a signed effect. Its other part, the QK fix,
recomputes the attention softmax for query and key nodes (`relscope patch --qk`): a query or key site's change of
its head outputs is the exact one (scores.qk_change), linearised only after the softmax, where plain AtP takes the
gradient through it. An attention-score site's change is exact in every estimator (it is linear in the weights).

A site inside layer l (its attention or MLP output, a head's output) reaches the judgment only through layer l's
writes, so its term for l is 0 and the mean is over the other L - 1 layers, as AtP* writes it. A residual-stream
site is inside no layer: none of its L terms vanishes and the mean is over L (relscope's choice; AtP* has no such
nodes). The estimate is written as a magnitude of the IE: LD_patched = LD_corrupted + sign(gap) * c. Cost: the
clean and corrupted forwards and L backward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

import numpy as np
import torch

from relscope.analysis.patching.atp import clean_side, embeddings_output, first_order_estimates
from relscope.analysis.patching.engine import PairResult, PatchingEngine
from relscope.analysis.patching.hooks import capturing
from relscope.analysis.patching.pairs import PatchPair
from relscope.analysis.patching.sites import Site
from relscope.errors import ModelError

RESIDUAL = ("resid_pre", "resid_post")


def layer_terms(engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site]) -> tuple[np.ndarray, float, float]:
    """((layers, sites) AtP estimates with each layer's residual writes cut from the backward, LD_clean,
    LD_corrupted): one forward of the corrupted prompt, one backward per layer."""
    depth = len(engine.spec.layer_list(engine.model))
    if depth < 2:  # a site's own layer is its only way out: nothing left to average
        raise ModelError(f"GradDrop needs at least 2 layers; this model has {depth}: use --attribution atp")
    keys = sorted({s.key for s in sites})
    clean, ld_clean = clean_side(engine, pair, sites, qk_fix=True)
    dropped: list[int | None] = [None]

    def cut_at(layer: int):
        def hook(_module, _args, out):
            write = out[0] if isinstance(out, tuple) else out
            write.register_hook(lambda grad: torch.zeros_like(grad) if dropped[0] == layer else grad)
        return hook

    store: dict = {}
    terms = np.zeros((depth, len(sites)))
    with torch.enable_grad(), embeddings_output(engine), ExitStack() as stack, \
            capturing(engine.model, engine.spec, keys, store, detach=False):
        for layer in range(depth):
            for module in (engine.spec.attention_of(engine.model, layer), engine.spec.mlp_of(engine.model, layer)):
                stack.callback(module.register_forward_hook(cut_at(layer)).remove)
        ld = engine.head(engine.backbone(input_ids=engine.ids(pair.corrupted)).last_hidden_state[:, -1])[0]
        corrupted = {k: store[k][0].detach() for k in keys}
        for layer in range(depth):
            dropped[0] = layer
            grads = torch.autograd.grad(ld, [store[k] for k in keys], retain_graph=True, allow_unused=True)
            grads = {k: (g[0] if g is not None else torch.zeros_like(store[k][0])) for k, g in zip(keys, grads)}
            terms[layer] = first_order_estimates(engine, pair, sites, clean, corrupted, grads)
    engine.forwards += 1
    inside = np.array([[s.component not in RESIDUAL and s.layer == layer for s in sites] for layer in range(depth)])
    terms[inside] = 0.0  # the site's own layer: its only way to the judgment is cut
    return terms, ld_clean, float(ld.detach())


def grad_drop(engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site]) -> PairResult:
    """AtP*'s GradDrop magnitude for every site, as a PairResult whose IE is c / |gap| (never negative)."""
    terms, ld_clean, ld_corrupted = layer_terms(engine, pair, sites)
    depth = len(terms)
    counted = np.array([depth if s.component in RESIDUAL else depth - 1 for s in sites])
    magnitude = np.abs(terms).sum(0) / counted
    sign = 1.0 if ld_clean >= ld_corrupted else -1.0
    return PairResult(pair.qid, ld_clean, ld_corrupted, ld_corrupted + sign * magnitude)
