"""The patching engine: the clean run's activations are cached once per pair; many patch variants (one site each)
go through one batched forward of the corrupted prompt, each batch row patched at its own site.

The metric is the head's logit difference at the last token (yes - no, A - B, or the linear score), and the
indirect effect of a site is IE = (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from relscope.analysis.patching.hooks import Edit, capturing, patching
from relscope.analysis.patching.pairs import PatchPair
from relscope.analysis.patching.scores import qk_change, record_attention, score_delta, split_block
from relscope.analysis.patching.sites import ATTENTION_EDITS, Site
from relscope.models.scoring import unwrap
from relscope.models.specs import ModelSpec

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from relscope.models.heads import Head
    from relscope.prompts.tokenize import TokenizedPrompt


@dataclass(frozen=True)
class PairResult:
    qid: str
    clean: float  # LD of the clean prompt
    corrupted: float  # LD of the corrupted prompt
    patched: np.ndarray  # LD of the corrupted prompt with each site patched from the clean run

    @property
    def gap(self) -> float:
        """LD_clean - LD_corrupted: the effect a patch is measured against."""
        return self.clean - self.corrupted

    def indirect_effects(self) -> np.ndarray:
        """(sites,) IE = (LD_patched - LD_corrupted) / gap of each site on this pair."""
        return (self.patched - self.corrupted) / self.gap


def indirect_effects(results: Sequence[PairResult], min_gap: float) -> tuple[np.ndarray, list[str]]:
    """(pairs kept, sites) IE array, and the qids excluded because |LD_clean - LD_corrupted| < min_gap
    (a near-zero gap makes the ratio noise)."""
    kept = [r for r in results if abs(r.gap) >= min_gap]
    excluded = [r.qid for r in results if abs(r.gap) < min_gap]
    width = len(results[0].patched) if results else 0
    return (np.stack([r.indirect_effects() for r in kept]) if kept else np.empty((0, width))), excluded


class PatchingEngine:
    def __init__(self, model: PreTrainedModel | PeftModel, spec: ModelSpec, head: Head, batch_size: int = 16) -> None:
        self.model = unwrap(model)
        self.spec = spec
        text = self.model.config.get_text_config()
        self.n_heads = int(text.num_attention_heads)
        self.n_kv_heads = int(getattr(text, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = spec.projection_of(self.model, 0, "o").in_features // self.n_heads
        self.backbone = spec.backbone_of(self.model)
        self.head = head
        self.batch_size = batch_size
        self.forwards = 0  # forward passes run, for the benchmark

    @property
    def device(self) -> torch.device:
        """Where the model's weights are, so inputs and positions can be put beside them."""
        return next(self.model.parameters()).device

    def ids(self, prompt: TokenizedPrompt, rows: int = 1) -> torch.Tensor:
        """(rows, seq) the prompt's token ids on the model's device, the same row repeated (a view, no copies)."""
        return torch.tensor([prompt.input_ids], device=self.device).expand(rows, -1)

    @torch.inference_mode()
    def logit_diffs(self, ids: torch.Tensor,
                    edits: Mapping[tuple[str, int], Sequence[Edit]] | None = None) -> np.ndarray:
        """(batch,) logit differences; every row has the same length, so the last token is the last column."""
        self.forwards += 1
        with patching(self.model, self.spec, edits or {}):
            hidden = self.backbone(input_ids=ids).last_hidden_state[:, -1]
        return self.head(hidden).float().cpu().numpy()

    @torch.inference_mode()
    def activations(self, prompt: TokenizedPrompt,
                    keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], torch.Tensor]:
        """(seq, d_model) activation of each (component, layer) on one prompt."""
        return self.run(prompt, keys)[0]

    @torch.inference_mode()
    def run(self, prompt: TokenizedPrompt,
            keys: Sequence[tuple[str, int]]) -> tuple[dict[tuple[str, int], torch.Tensor], float]:
        """One forward of one prompt: each (component, layer)'s (seq, d_model) activation, and its logit difference."""
        store: dict[tuple[str, int], torch.Tensor] = {}
        with capturing(self.model, self.spec, keys, store):
            hidden = self.backbone(input_ids=self.ids(prompt)).last_hidden_state[:, -1]
        self.forwards += 1
        return {k: v[0] for k, v in store.items()}, float(self.head(hidden).float()[0])

    def corrupted_logit_diff(self, pair: PatchPair) -> float:
        """LD_corrupted: the corrupted prompt's logit difference, nothing patched."""
        return float(self.logit_diffs(self.ids(pair.corrupted))[0])

    def end_points(self, pair: PatchPair) -> tuple[float, float]:
        """(LD_clean, LD_corrupted) exactly as `sweep` computes them, without patching anything."""
        return self.run(pair.clean, [])[1], self.corrupted_logit_diff(pair)

    def sweep(self, pair: PatchPair, sites: Sequence[Site]) -> PairResult:
        """Patch each site from clean into corrupted: one batched forward per `batch_size` sites."""
        clean, ld_clean = self.run(pair.clean, self.activation_keys(sites))
        clean.update(self.attention_changes(pair, sites))
        positions = {g: self.positions(pair.corrupted, g) for g in {s.rows for s in sites}}
        patched = np.empty(len(sites))
        for start in range(0, len(sites), self.batch_size):
            chunk = sites[start:start + self.batch_size]
            edits: dict[tuple[str, int], list[Edit]] = defaultdict(list)
            for row, site in enumerate(chunk):
                edits[site.key].append(self.edit(row, site, positions[site.rows], clean))
            patched[start:start + len(chunk)] = self.logit_diffs(self.ids(pair.corrupted, len(chunk)), edits)
        return PairResult(pair.qid, ld_clean, self.corrupted_logit_diff(pair), patched)

    def positions(self, prompt: TokenizedPrompt, group: str) -> torch.Tensor:
        """The prompt's token positions of `group` (query, document, ...) as a long tensor on the model's device."""
        return torch.tensor(prompt.positions(group), device=self.device, dtype=torch.long)

    @staticmethod
    def activation_keys(sites: Sequence[Site]) -> list[tuple[str, int]]:
        """The clean activations the sites copy (score, query and key patches are changes of head outputs, computed
        from the recorded attention instead)."""
        return sorted({s.key for s in sites if s.component not in ATTENTION_EDITS})

    def attention_changes(self, pair: PatchPair, sites: Sequence[Site],
                          linear: bool = False) -> dict[Site, torch.Tensor]:
        """For each attention-score, query and key site, the (seq, width) change of the head outputs it patches
        (its columns of the o_proj input; zero at rows it cannot reach): what writing the clean weights on a block's
        columns, or the clean queries or keys at a group's positions, does (see scores.py). With `linear`, the
        first-order change of a query or key patch (a score patch is linear in the weights already)."""
        wanted = [s for s in sites if s.component in ATTENTION_EDITS]
        if not wanted:
            return {}
        clean, corrupted = record_attention(self, pair.clean), record_attention(self, pair.corrupted)
        changes = {}
        for site in wanted:
            if site.component != "scores":
                changes[site] = qk_change(site, self.positions(pair.corrupted, site.group), clean, corrupted, linear)
                continue
            rows, columns = (self.positions(pair.corrupted, g) for g in split_block(site.group))
            change = torch.zeros(len(pair.corrupted), self.head_dim, device=self.device)
            change[rows] = score_delta(site, rows, columns, clean, corrupted)
            changes[site] = change
        return changes

    def columns(self, site: Site) -> slice:
        """The site's slice of its activation's last axis: one head's block of the o_proj input (a key site: the
        blocks of its group's n_rep query heads, side by side), else all."""
        if site.head is None:
            return slice(None)
        heads = self.n_heads // self.n_kv_heads if site.component == "k" else 1
        return slice(site.head * heads * self.head_dim, (site.head + 1) * heads * self.head_dim)

    def edit(self, row: int, site: Site, where: torch.Tensor, clean: dict, first: int = 0) -> Edit:
        """Batch row `row` gets the clean activation at positions `where` (and the site's columns), or for a score,
        query or key site the change of its head outputs added there; `clean` maps (component, layer) to the clean
        activation and such a site to its change. The edit's positions count from `first` (the fast path runs
        positions first..)."""
        columns = self.columns(site)
        if site.component in ATTENTION_EDITS:
            return Edit(row, where - first, clean[site][where], columns, add=True)
        return Edit(row, where - first, clean[site.key][where][:, columns], columns)

    def naive(self, pair: PatchPair, site: Site) -> float:
        """The reference: a full clean forward to read the activation, then one full forward with the patch."""
        clean = self.activations(pair.clean, self.activation_keys([site]))
        clean.update(self.attention_changes(pair, [site]))
        edit = {site.key: [self.edit(0, site, self.positions(pair.corrupted, site.rows), clean)]}
        return float(self.logit_diffs(self.ids(pair.corrupted), edit)[0])
