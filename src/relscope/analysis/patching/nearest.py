"""AtP linearised at the nearer end (`--attribution atp-nearest`, relscope's own estimator; not from a paper).

A residual-stream site is the whole state of the model at its layer, so patching positions G of it into the
corrupted run makes the same run as the clean prompt with the rest of the stream (C: every other position from the
prompts' first difference on) set to its corrupted value. The patched logit difference therefore has two
first-order estimates, one about each end:

    about the corrupted run (AtP, denoising G):  LD_corrupted + sum over G of (r_clean - r_corrupted) . dLD/dr
    about the clean run (noising C):             LD_clean     + sum over C of (r_corrupted - r_clean) . dLD/dr

with each gradient taken on its own run. A first-order estimate is good when its step is small, so each residual
site takes the one whose step (the Frobenius norm of the change it linearises over, all its positions together)
is the smaller. A patch of a whole document is then a short step from the clean run (the positions after the document)
where AtP's step is the whole document; a patch of the last token stays AtP. Sites that are not the residual stream
get AtP's estimate: for them the same identity holds only at a residual point after the site, which differs by
family (Gemma's post-norms, GPT-NeoX's parallel blocks). Costs one backward more than AtP (4 passes a pair) when
there are residual sites, AtP's 3 when there are none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from relscope.analysis.patching.atp import attribution_patching, first_order_estimates, gradient_run
from relscope.analysis.patching.engine import PairResult, PatchingEngine
from relscope.analysis.patching.fast import RESIDUAL, first_difference
from relscope.analysis.patching.pairs import PatchPair, same_layout
from relscope.analysis.patching.sites import Site
from relscope.errors import DataError


def nearest_end_patching(engine: PatchingEngine, pair: PatchPair, sites: Sequence[Site]) -> PairResult:
    """Each site's estimate as a PairResult whose `patched` is LD_corrupted + the estimate: residual sites
    linearised about whichever run their patch is nearer to, every other site AtP's."""
    if not same_layout(pair.clean, pair.corrupted):
        raise DataError(f"pair {pair.qid}: atp-nearest needs prompts of one token layout (the clean run with the "
                        f"rest of the stream corrupted must be the patched run)")
    residual = sorted({s.key for s in sites if s.component in RESIDUAL})
    if not residual:  # nothing to linearise elsewhere: AtP's passes, not a clean backward with nothing to read
        return attribution_patching(engine, pair, sites)
    keys = sorted({s.key for s in sites})
    clean, clean_grads, ld_clean = gradient_run(engine, pair.clean, keys, residual)
    clean.update(engine.attention_changes(pair, sites, linear=True))  # score sites: as AtP
    corrupted, grads, ld_corrupted = gradient_run(engine, pair.corrupted, keys, keys)
    estimates = first_order_estimates(engine, pair, sites, clean, corrupted, grads)
    sides = ResidualSides(engine, pair, clean, corrupted, clean_grads)
    for i, site in enumerate(sites):
        if site.component in RESIDUAL:
            from_clean = sides.from_clean(site)
            if from_clean is not None:
                estimates[i] = ld_clean + from_clean - ld_corrupted
    return PairResult(pair.qid, ld_clean, ld_corrupted, ld_corrupted + estimates)


class ResidualSides:
    """Per residual (component, layer), per position from the first difference on: the squared norm of the change
    r_corrupted - r_clean and its first-order effect about the clean run; a site sums them over G and over C."""

    def __init__(self, engine: PatchingEngine, pair: PatchPair, clean: Mapping, corrupted: Mapping,
                 clean_grads: Mapping) -> None:
        self.engine = engine
        self.pair = pair
        self.differ = first_difference(pair)
        self.clean, self.corrupted, self.clean_grads = clean, corrupted, clean_grads
        self._per_position: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._groups: dict[str, torch.Tensor] = {}

    def per_position(self, key: tuple[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared norm, effect about the clean run) of each position's change, float64, positions >= differ."""
        if key not in self._per_position:
            change = self.corrupted[key][self.differ:].double() - self.clean[key][self.differ:].double()  # not in bf16
            grad = self.clean_grads[key][self.differ:].double()
            self._per_position[key] = (change.pow(2).sum(-1), (change * grad).sum(-1))
        return self._per_position[key]

    def in_group(self, group: str) -> torch.Tensor:
        """(positions >= differ,) bool: which of them the group patches."""
        if group not in self._groups:
            mask = torch.zeros(len(self.pair.corrupted) - self.differ, dtype=torch.bool)
            where = [p - self.differ for p in self.pair.corrupted.positions(group) if p >= self.differ]
            mask[where] = True
            self._groups[group] = mask.to(self.engine.device)
        return self._groups[group]

    def from_clean(self, site: Site) -> float | None:
        """sum over C of (r_corrupted - r_clean) . dLD/dr on the clean run, when that step is shorter than AtP's
        (over G); None when it is not (a tie stays AtP)."""
        squared, effect = self.per_position(site.key)
        patched = self.in_group(site.rows)
        if float(squared[~patched].sum()) >= float(squared[patched].sum()):
            return None
        return float(effect[~patched].sum())
