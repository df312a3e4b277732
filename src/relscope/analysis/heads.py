"""What each attention head reads and writes (`relscope heads MODEL [ADAPTER]`).

Attention interaction score (per head), as study 002 defines it: s(q, d) = sum over the query positions i of the
max over the document positions k of A[i, k] (the query attending to the document); S = s(q, d+) - s(q, d-)
averaged over pairs. The causal mask allows that block when the document comes first (the analyses' default
layout); `query_block: document>query` is the option for a layout with the query first (a layout that leaves the
chosen block empty is refused by the settings). Pointwise: d+ and d- are the two prompts of a patching pair;
pairwise: documents A (relevant) and B of the clean prompt.

Logit lens (per head, at the last token): the head's write into the residual stream, o_h = W_O[:, h] z_h, read by the
unembedding as study 002 defines it, W_U o_h + b (no final norm): its top tokens, and whether the first is an answer
token ("yes"/"A" or "no"/"B"). The same read through the model's final norm first sits beside it, labelled "final
norm" (a head's write alone is not what the norm sees, so the study's linear read is the default). Its direct
contribution to the answer logit difference is LD(final residual) - LD(final residual - o_h), both through the
model's own final norm and head (no frozen-scale approximation at the final norm). Gemma 2/3 also normalise the
attention output before adding it; there the normed output is split among the heads with that norm's scale frozen
(`head_writes`), so the writes still add up to what the layer adds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from relscope.analysis.patching.engine import PatchingEngine
from relscope.analysis.patching.hooks import capturing
from relscope.analysis.patching.pairs import PatchPair
from relscope.analysis.patching.scores import recording_attention
from relscope.analysis.patching.settings import HeadsSettings
from relscope.errors import ConfigError

if TYPE_CHECKING:
    from relscope.prompts.tokenize import TokenizedPrompt

HEADS, TOP_HEADS = "heads", "top_heads"  # the tables written (.csv and .md)
INTERACTION_FIGURE, DIRECT_FIGURE = "interaction.png", "direct.png"
DIRECT = "direct contribution"  # the column the top heads are ranked by
LENSES = {"study": False, "final norm": True}  # the logit lens as 002 defines it (W_U a + b), and through the norm


@dataclass(frozen=True)
class HeadReadout:
    interaction: np.ndarray  # (layers, heads) s(q, d+) - s(q, d-) for one pair
    direct: np.ndarray  # (layers, heads) direct contribution of each head to the clean prompt's LD
    writes: np.ndarray  # (layers, heads, d_model) each head's output o_h at the last token of the clean prompt


def interaction(weights: torch.Tensor, rows: list[int], columns: list[int]) -> torch.Tensor:
    """(heads,): sum over `rows` of the max over `columns` of the attention weights (heads, seq, seq)."""
    if not rows or not columns:
        return torch.zeros(weights.shape[0])
    block = weights[:, rows][:, :, columns].float()
    return block.max(dim=-1).values.sum(dim=-1)


def interaction_block(prompt: TokenizedPrompt, query_block: str) -> tuple[str, str]:
    """(attending group, attended group) of `query_block`, checked against the prompt: the attending group must come
    after the attended one, or the causal mask leaves the block empty."""
    rows, columns = query_block.split(">")
    if min(prompt.positions(rows)) < min(prompt.positions(columns)):
        raise ConfigError(f"--query-block {query_block}: in these prompts the {rows} comes before the {columns}, so "
                          "the causal mask leaves the block empty; put the document first (--layout "
                          "document-query-instruction) or use the other block")
    return rows, columns


def _document_positions(prompt, index: int) -> list[int]:
    return [p for s in prompt.spans if s.group == "document" and s.index == index for p in range(s.start, s.end)]


class HeadAnalysis:
    """Per-head readouts over patching pairs: interaction scores on `query_block`, writes, direct contributions."""

    def __init__(self, engine: PatchingEngine, query_block: str = "query>document") -> None:
        self.engine, self.query_block = engine, query_block
        model, spec = engine.model, engine.spec
        self.depth = len(spec.layer_list(model))
        self.final_norm = spec.resolve(model, spec.final_norm)
        self.unembedding = model.get_output_embeddings()
        # Gemma 2/3 normalise the attention output before adding it: the heads' writes then do not add linearly
        self.sandwich_norms = hasattr(spec.layer_list(model)[0], "pre_feedforward_layernorm")

    @torch.inference_mode()
    def _forward(self, prompt) -> tuple[dict[int, torch.Tensor], dict]:
        """One forward: every layer's attention weights, and the o_proj inputs and final residual at the last token."""
        engine = self.engine
        keys = [("z", layer) for layer in range(self.depth)] + [("resid_post", self.depth - 1)]
        if self.sandwich_norms:  # the attention output before its norm, to split the normed write among the heads
            keys += [("attn", layer) for layer in range(self.depth)]
        acts: dict = {}
        with recording_attention(engine.model) as store, capturing(engine.model, engine.spec, keys, acts):
            engine.backbone(input_ids=engine.ids(prompt))
        engine.forwards += 1
        return {layer: a.weights[0] for layer, a in store.items()}, {k: v[0, -1] for k, v in acts.items()}

    @torch.inference_mode()
    def head_writes(self, last: dict) -> torch.Tensor:
        """(layers, heads, d_model): each head's write into the residual stream at the last token: o_h = W_O[:, h] z_h
        (the o_proj bias belongs to no head). Where a norm follows the attention (Gemma 2/3), the normed output
        y = norm(sum_h o_h) is split with the norm's scale frozen: write_h = o_h * y / x, so the writes still add up
        to what the layer adds (the frozen-scale decomposition of direct logit attribution)."""
        engine, n, d = self.engine, self.engine.n_heads, self.engine.head_dim
        writes = []
        for layer in range(self.depth):
            weight = engine.spec.projection_of(engine.model, layer, "o").weight  # (d_model, heads * head_dim)
            z = last[("z", layer)].to(weight.dtype).view(n, d)
            share = torch.einsum("mhd,hd->hm", weight.view(-1, n, d), z).float()
            if self.sandwich_norms:
                x = last[("attn", layer)].float()
                y = engine.spec.layer_list(engine.model)[layer].post_attention_layernorm(last[("attn", layer)]).float()
                share = share * torch.where(x != 0, y / x, torch.zeros_like(x))
            writes.append(share)
        return torch.stack(writes)

    @torch.inference_mode()
    def direct_contributions(self, residual: torch.Tensor, writes: torch.Tensor) -> np.ndarray:
        """(layers, heads): LD(residual) - LD(residual - o_h), through the final norm and the head."""
        flat = writes.reshape(-1, writes.shape[-1])
        ablated = residual.float()[None] - flat
        hidden = self.final_norm(torch.cat([residual.float()[None], ablated]).to(residual.dtype))
        ld = self.engine.head(hidden).float()
        return (ld[0] - ld[1:]).view(writes.shape[:2]).cpu().numpy()

    def readout(self, pair: PatchPair) -> HeadReadout:
        """Interaction change, direct contributions and writes of every head on one pair (one or two forwards)."""
        weights, last = self._forward(pair.clean)
        if _document_positions(pair.clean, 1):  # pairwise: document A (the relevant one) against B, one prompt
            interaction_change = self._interaction(weights, pair.clean, 0) - self._interaction(weights, pair.clean, 1)
        else:
            corrupted, _ = self._forward(pair.corrupted)
            interaction_change = self._interaction(weights, pair.clean, 0) - self._interaction(corrupted,
                                                                                               pair.corrupted, 0)
        writes = self.head_writes(last)
        direct = self.direct_contributions(last[("resid_post", self.depth - 1)], writes)
        return HeadReadout(interaction_change, direct, writes.cpu().numpy())

    def _interaction(self, weights: dict[int, torch.Tensor], prompt, document: int) -> np.ndarray:
        """(layers, heads): s(q, d) for document `document` of the prompt."""
        query, docs = prompt.positions("query"), _document_positions(prompt, document)
        rows, columns = (docs, query) if interaction_block(prompt, self.query_block)[0] == "document" else (query, docs)
        return torch.stack([interaction(weights[layer], rows, columns) for layer in range(self.depth)]).numpy()

    @torch.inference_mode()
    def logit_lens(self, writes: np.ndarray, top: int = 5, final_norm: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top token ids (layers, heads, top) and their logits of each head's write: W_U a + b as study 002 defines
        the logit lens, or through the model's final norm first (`final_norm=True`)."""
        flat = torch.from_numpy(writes.reshape(-1, writes.shape[-1]))
        weight = self.unembedding.weight
        flat = flat.to(weight.device, weight.dtype)
        logits = self.unembedding(self.final_norm(flat) if final_norm else flat).float()
        values, ids = logits.topk(top, dim=-1)
        shape = writes.shape[:2] + (top,)
        return ids.view(shape).cpu().numpy(), values.view(shape).cpu().numpy()


def heads_job(settings: HeadsSettings, out: str | Path, progress: bool = True) -> list[dict]:
    """Interaction scores, logit lens and direct contributions of every head over the patching pairs of
    `settings`; tables, heatmaps and a manifest in `out`."""
    from relscope.analysis.patching.job import load_patch_model, pair_groups
    from relscope.analysis.patching.pairs import build_pairs
    from relscope.io import atomic_path, atomic_write_json
    from relscope.manifest import build_manifest
    from relscope.processes import over_items, process_device, process_state
    from relscope.reports import plots
    from relscope.reports.tables import write_table

    out, patch = Path(out), settings.patch_settings()
    ie_heads, ie_group, marked = settings.ie_heads, settings.ie_group, settings.marked
    marks = _top_ie_heads(ie_heads, ie_group, marked) if ie_heads else []  # a bad file fails before the model loads
    loaded, head, builder = load_patch_model(patch, process_device())
    pairs, report = build_pairs(pair_groups(patch.groups), builder, patch.max_pairs, patch.negative_kind)
    analysis = HeadAnalysis(PatchingEngine(loaded.model, loaded.spec, head), settings.query_block)
    readouts = over_items(analysis.readout, pairs, "pairs", progress)
    if not process_state().is_main_process:
        return []
    interaction_change = np.stack([r.interaction for r in readouts])
    direct = np.stack([r.direct for r in readouts])
    mean_write = np.mean([r.writes for r in readouts], axis=0)
    top_ids, first_ids = {}, {}
    for lens, normed in LENSES.items():
        top_ids[lens], _ = analysis.logit_lens(mean_write, final_norm=normed)
        first_ids[lens] = np.stack([analysis.logit_lens(r.writes, top=1, final_norm=normed)[0][..., 0]
                                    for r in readouts])
    answers = [int(i) for i in getattr(head, "answer_ids", [])]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "heads.npz") as tmp, tmp.open("wb") as f:
        np.savez(f, interaction=interaction_change, direct=direct, top_ids=top_ids["study"],
                 first_ids=first_ids["study"], top_ids_final_norm=top_ids["final norm"],
                 first_ids_final_norm=first_ids["final norm"], qids=np.array([p.qid for p in pairs]))
    rows = _head_rows(interaction_change, direct, top_ids, first_ids, answers, loaded.tokenizer)
    write_table(sorted(rows, key=lambda r: -abs(r[DIRECT]))[:20], out / TOP_HEADS,
                f"Heads by |direct contribution| to the answer logit difference ({len(pairs)} pairs)")
    write_table(rows, out / HEADS, "Every head: interaction score, direct contribution, logit lens")
    layers, heads = [str(i) for i in range(analysis.depth)], [str(h) for h in range(analysis.engine.n_heads)]
    block = ">".join(interaction_block(pairs[0].clean, settings.query_block))
    plots.save(plots.heatmap(interaction_change.mean(0), layers, heads,
                             f"{loaded.name}: attention interaction S = s(q,d+) - s(q,d-), {block} "
                             f"({len(pairs)} pairs)" + (f"; boxes: top-{marked} IE heads ({ie_group})"
                                                        if marks else ""),
                             "S (attention mass)", xlabel="head", ylabel="layer", diverging=True, marks=marks),
               out / INTERACTION_FIGURE)
    plots.save(plots.heatmap(direct.mean(0), layers, heads,
                             f"{loaded.name}: direct contribution to the answer logit difference ({len(pairs)} pairs)",
                             "logit difference", xlabel="head", ylabel="layer", diverging=True, marks=marks),
               out / DIRECT_FIGURE)
    atomic_write_json(out / "manifest.json", build_manifest(
        {"model": loaded.source, "adapter": settings.adapter, "template": builder.template.name,
         "layout": builder.template.layout, "groups": settings.groups, "max_pairs": settings.max_pairs,
         "ie_heads": ie_heads,
         "ie_group": ie_group},
        {}, pairs=report.pairs, interaction_block=block, forwards=analysis.engine.forwards,
        logit_lens="W_U a + b on each head's write (study 002); the columns marked 'final norm' read it through the "
                   "model's final norm first",
        head_writes=("split through the post-attention norm with its scale frozen (Gemma-style sandwich norms)"
                     if analysis.sandwich_norms else "o_proj slices, which add into the residual as they are")))
    return rows


def _head_rows(interaction_change, direct, top_ids, first_ids, answers, tokenizer) -> list[dict]:
    """One row per head; the logit-lens columns once per lens (the study's W_U a + b, then through the final norm)."""
    rows = []
    for layer in range(direct.shape[1]):
        for h in range(direct.shape[2]):
            row = {"layer": layer, "head": h, "interaction S": float(interaction_change[:, layer, h].mean()),
                   DIRECT: float(direct[:, layer, h].mean())}
            for lens in LENSES:
                label = "" if lens == "study" else f" ({lens})"
                tokens = " ".join(repr(tokenizer.decode([int(i)])) for i in top_ids[lens][layer, h])
                row[f"logit lens top tokens{label}"] = tokens
                for name, token in zip(("yes/A", "no/B"), answers):
                    row[f"top-1 is {name}{label}"] = float(np.mean(first_ids[lens][:, layer, h] == token))
            rows.append(row)
    return rows


def _top_ie_heads(path: str, group: str, count: int) -> list[tuple[int, int]]:
    """(layer, head) of the `count` heads with the largest |mean IE| at `group` in a patch run's ie_heads.npz."""
    from relscope.analysis.patching.artefacts import load_ie_heads

    saved = load_ie_heads(path)
    if saved.method != "exact":
        logging.getLogger(__name__).warning("%s: heads outlined by %s estimates, not exact patching", path,
                                            saved.method)
    groups = saved.groups
    if group not in groups:
        raise ConfigError(f"{path}: no position group {group!r} in its head patching; it has {', '.join(groups)}")
    mean = saved.ie[:, groups.index(group)].mean(0)
    order = np.argsort(-np.abs(mean), axis=None)[:count]
    layers = saved.layers
    return [(layers[i // mean.shape[1]], int(i % mean.shape[1])) for i in order]
