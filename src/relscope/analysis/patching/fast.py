"""The exact fast path: recompute only what a patch can change.

A patch at layer l and positions >= p leaves everything before layer l, and every position before p, exactly as in
the corrupted run (causal attention). And before the first token where the two prompts differ, the clean and the
corrupted activations are the same numbers, so those positions are dropped from every patch (a patch of only such
positions, e.g. the query of a pointwise pair, changes nothing and is not run). By the same argument, a patch of
the whole residual stream at a layer (every position from the first difference on) makes the clean run, and its
logit difference is the clean one, not re-run.

So the corrupted run is done once with its residual stream and its keys and values cached; each patch then re-runs
layers >= l only, on positions >= p only, from the cached residual, attending to the cached keys/values of
positions < p. The decoder layers are Hugging Face's own, run as a shorter stack
(`stack_from`); nothing is reimplemented. Tests hold this path equal to the naive full forward per patch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from relscope.analysis.patching.engine import PairResult, PatchingEngine
from relscope.analysis.patching.hooks import Edit, capturing, patching
from relscope.analysis.patching.pairs import PatchPair
from relscope.analysis.patching.sites import ATTENTION_EDITS, Site

if TYPE_CHECKING:
    from relscope.models.specs import ModelSpec

RESIDUAL = ("resid_pre", "resid_post")


@contextmanager
def stack_from(model: nn.Module, spec: ModelSpec, start: int) -> Iterator[None]:
    """Make the backbone run decoder layers start.. only (and per-layer config lists, e.g. Gemma's layer_types,
    from the same index); the full stack is restored on exit."""
    parent_path, name = spec.layers.rsplit(".", 1)
    parent = spec.resolve(model, parent_path)
    full = getattr(parent, name)
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None)
    setattr(parent, name, nn.ModuleList(list(full)[start:]))
    if isinstance(layer_types, list):
        config.layer_types = layer_types[start:]
    try:
        yield
    finally:
        setattr(parent, name, full)
        if isinstance(layer_types, list):
            config.layer_types = layer_types


def first_difference(pair: PatchPair) -> int:
    """The first position where the two prompts' tokens differ; their length when none does (then every patch
    copies the same numbers and changes nothing)."""
    return next((i for i, (a, b) in enumerate(zip(pair.clean.input_ids, pair.corrupted.input_ids)) if a != b),
                len(pair.corrupted))


@dataclass
class Plan:
    """A sweep's work: (start layer, first position) -> the sites re-run from there; the sites that change nothing
    (every patched position precedes the prompts' first difference); the sites that make the clean run (a residual
    stream patched at every position); site -> the site whose re-run it shares."""

    positions: dict[str, torch.Tensor]  # position group -> its positions at or after the first difference
    where: dict[int, torch.Tensor] = field(default_factory=dict)  # site -> the positions its edit writes
    reruns: dict[tuple[int, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    unchanged: list[int] = field(default_factory=list)
    clean: list[int] = field(default_factory=list)
    same_as: dict[int, int] = field(default_factory=dict)


class FastPatcher:
    def __init__(self, engine: PatchingEngine) -> None:
        self.engine = engine
        self.depth = len(engine.spec.layer_list(engine.model))

    @torch.inference_mode()
    def _corrupted_run(self, prompt) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]], float]:
        """The residual stream entering each layer (and leaving the last), every layer's keys and values, and the
        logit difference: one forward."""
        keys = [("resid_pre", layer) for layer in range(self.depth)] + [("resid_post", self.depth - 1)]
        store: dict = {}
        with capturing(self.engine.model, self.engine.spec, keys, store):
            # a cache without the config keeps every position in every layer: a sliding-window layer's own cache
            # would keep only the last `sliding_window` keys, and the re-runs need all those before p
            out = self.engine.backbone(input_ids=self.engine.ids(prompt), cache=DynamicCache(), use_cache=True)
        self.engine.forwards += 1
        stream = [store[("resid_pre", layer)][0] for layer in range(self.depth)] + [store[keys[-1]][0]]
        logit_diff = float(self.engine.head(out.last_hidden_state[:, -1]).float()[0])
        return stream, [(k, v) for k, v, *_ in out.cache], logit_diff

    def end_points(self, pair: PatchPair) -> tuple[float, float]:
        """(LD_clean, LD_corrupted) exactly as `sweep` computes them, without patching anything."""
        return self.engine.run(pair.clean, [])[1], self._corrupted_run(pair.corrupted)[2]

    @staticmethod
    def _start(site: Site) -> int:
        return site.layer + 1 if site.component == "resid_post" else site.layer

    def plan(self, pair: PatchPair, sites: Sequence[Site]) -> Plan:
        """Which sites re-run from which (start layer, first position), which change nothing, and which are the same
        patch as another (resid_post of layer l - 1 and resid_pre of layer l write the same clean tensor into the same
        stream: one re-run serves both, bit for bit)."""
        differ = first_difference(pair)
        groups = {s.rows for s in sites} | {s.group for s in sites if s.component == "k"}
        positions = {g: torch.tensor([p for p in pair.corrupted.positions(g) if p >= differ],
                                     device=self.engine.device, dtype=torch.long) for g in groups}
        plan = Plan(positions)
        seen: dict[tuple, int] = {}
        for i, site in enumerate(sites):
            where = positions[site.rows]
            if site.component == "k":  # rows before its first patched key read none of them: their change is 0
                keys = positions[site.group]
                where = where[where >= keys.min()] if len(keys) else keys
            if not len(where):
                plan.unchanged.append(i)
                continue
            if site.component in RESIDUAL and len(where) == len(pair.corrupted) - differ:
                plan.clean.append(i)  # the whole stream entering a layer is the clean one: so is all that follows
                continue
            plan.where[i] = where
            start = self._start(site)
            signature = ("resid" if site.component in RESIDUAL else site.component, start, site.head,
                         site.group if site.component in ATTENTION_EDITS else None, tuple(where.tolist()))
            if signature in seen:
                plan.same_as[i] = seen[signature]
                continue
            seen[signature] = i
            plan.reruns[start, int(where.min())].append(i)
        return plan

    def sweep(self, pair: PatchPair, sites: Sequence[Site]) -> PairResult:
        """The same numbers as `PatchingEngine.sweep`, re-running only the layers and positions each patch changes."""
        engine = self.engine
        clean, ld_clean = engine.run(pair.clean, engine.activation_keys(sites))
        clean.update(engine.attention_changes(pair, sites))
        stream, kv, ld_corrupted = self._corrupted_run(pair.corrupted)
        plan = self.plan(pair, sites)
        patched = np.empty(len(sites))
        patched[plan.unchanged] = ld_corrupted
        patched[plan.clean] = ld_clean
        for (start, first), members in plan.reruns.items():
            for offset in range(0, len(members), engine.batch_size):
                chunk = members[offset:offset + engine.batch_size]
                inputs = stream[start][first:].unsqueeze(0).repeat(len(chunk), 1, 1)
                edits: dict[tuple[str, int], list[Edit]] = defaultdict(list)
                for row, i in enumerate(chunk):
                    site = sites[i]
                    edit = engine.edit(row, site, plan.where[i], clean, first)
                    if site.component in RESIDUAL:
                        inputs[row, edit.positions, edit.columns] = edit.values
                    else:
                        edits[site.key].append(edit)
                patched[chunk] = self._run(inputs, start, first, kv, edits)
        for i, same in plan.same_as.items():
            patched[i] = patched[same]
        return PairResult(pair.qid, ld_clean, ld_corrupted, patched)

    @torch.inference_mode()
    def _run(self, inputs: torch.Tensor, start: int, first: int, kv, edits) -> np.ndarray:
        """Layers start.. on positions first.. of `inputs`, earlier positions read from the cached keys/values."""
        engine = self.engine
        rows, length = inputs.shape[:2]
        cache = None
        if first > 0:
            cache = DynamicCache([(k[:, :, :first].expand(rows, -1, -1, -1), v[:, :, :first].expand(rows, -1, -1, -1))
                                  for k, v in kv])  # no config: full layers (the mask still applies the window)
        device = inputs.device
        mask = torch.ones(rows, first + length, dtype=torch.long, device=device)
        position_ids = torch.arange(first, first + length, device=device).expand(rows, -1)
        engine.forwards += 1
        with patching(engine.model, engine.spec, edits), stack_from(engine.model, engine.spec, start):  # hooks first
            hidden = engine.backbone(inputs_embeds=inputs, attention_mask=mask, position_ids=position_ids,
                                     cache=cache, use_cache=cache is not None).last_hidden_state[:, -1]
        return engine.head(hidden).float().cpu().numpy()
