"""Integrated gradients along the corrupted -> clean path of the input embeddings (EAP-IG's estimator, Hanna,
Pezzelle & Belinkov 2024, "Have Faith in Faithfulness", arXiv:2403.17806), for every site at once:

    LD_patched(site) - LD_corrupted  ~=  (a_clean - a_corrupted) . (1/m) sum_{j=0..m-1} dLD/da (e_j),
    e_j = e_corrupted + (j/m) (e_clean - e_corrupted)

the gradient at the site averaged over m points of the straight line between the two prompts' embeddings, instead
of read at the corrupted end only (AtP). The points are the reference code's (hannamw/EAP-IG, get_scores_eap_ig:
j = 0..m-1, the corrupted end included and the clean end not), so m = 1 is AtP exactly. EAP-IG's own orientation
is noising (its base run is the clean one and its difference corrupted - clean): relscope's denoising estimate is
minus its score over the same points.

The two prompts of a pair have the same tokens count and layout (pairs.py), so one prompt's ids with the embeddings
replaced run either. The m points are the rows of batched forwards (batch_size rows each); rows are independent,
so the gradient of their sum is each row's gradient. Cost: one clean forward, m forward and m backward rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from relscope.analysis.patching.atp import clean_side, embeddings_output, first_order_estimates
from relscope.analysis.patching.engine import PairResult, PatchingEngine
from relscope.analysis.patching.hooks import capturing
from relscope.analysis.patching.pairs import PatchPair
from relscope.analysis.patching.sites import Site
from relscope.errors import DataError

DEFAULT_STEPS = 5  # EAP-IG's paper setting; its code defaults to 30 (the estimate converges as 1/m)


def path_points(steps: int) -> torch.Tensor:
    """The interpolation weights 0, 1/m, ..., (m-1)/m (alpha 0 is the corrupted prompt)."""
    return torch.arange(steps, dtype=torch.float64) / steps


@torch.inference_mode()
def embeddings(engine: PatchingEngine, ids: torch.Tensor) -> torch.Tensor:
    """(seq, d_model) the embedding layer's output for one prompt's ids (a family's scaling included)."""
    return engine.model.get_input_embeddings()(ids)[0].clone()


def integrated_gradients(engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site],
                         steps: int = DEFAULT_STEPS) -> PairResult:
    """The IG estimate for every site, as a PairResult whose `patched` is LD_corrupted + the estimate."""
    if len(pair.clean) != len(pair.corrupted):
        raise DataError(f"pair {pair.qid}: integrated gradients needs prompts of one length ({len(pair.clean)} vs "
                        f"{len(pair.corrupted)} tokens)")
    keys = sorted({s.key for s in sites})
    clean, ld_clean = clean_side(engine, pair, sites)
    start = embeddings(engine, engine.ids(pair.corrupted)).double()
    step = embeddings(engine, engine.ids(pair.clean)).double() - start
    alphas = path_points(steps).to(start.device)
    summed = {k: 0.0 for k in keys}
    for first in range(0, steps, engine.batch_size):
        chunk = alphas[first:first + engine.batch_size]
        path = start + chunk[:, None, None] * step
        store: dict = {}
        with torch.enable_grad(), embeddings_output(engine, path), \
                capturing(engine.model, engine.spec, keys, store, detach=False):
            hidden = engine.backbone(input_ids=engine.ids(pair.corrupted, len(chunk))).last_hidden_state[:, -1]
            lds = engine.head(hidden)
            grads = torch.autograd.grad(lds.sum(), [store[k] for k in keys])
        engine.forwards += 1
        if first == 0:  # alpha = 0: the corrupted prompt itself
            corrupted = {k: store[k][0].detach() for k in keys}
            ld_corrupted = float(lds[0].detach())
        for key, grad in zip(keys, grads):
            summed[key] = summed[key] + grad.float().sum(0)  # m points summed in float32, not the model's bf16
    mean = {k: summed[k] / steps for k in keys}
    estimates = first_order_estimates(engine, pair, sites, clean, corrupted, mean)
    return PairResult(pair.qid, ld_clean, ld_corrupted, ld_corrupted + estimates)
