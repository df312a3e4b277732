"""Batched scoring that wastes no compute.

- Prompts are sorted by length and packed into batches under a token budget
  (right padding; causal attention means pads never affect real tokens).
- Only the last real token's hidden state goes to the head: no full-vocabulary logits.
- Prompts that share a prefix (one query's candidates) reuse the prefix's KV cache:
  the prefix runs once, each batch runs only the suffixes.
"""

from __future__ import annotations

import math

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from relscope.errors import ModelError, overflow_hint
from relscope.models.heads import Head
from relscope.models.specs import ModelSpec
from relscope.prompts.tokenize import TokenizedPrompt

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class ScoringOptions:
    # Padded tokens per forward; 0 = by device. On CPU, batches past ~1k tokens run slower per
    # token (activations leave the cache: 8192 was 1.7x slower than 1024 on SmolLM2, bench/rerank.py).
    max_batch_tokens: int = 0
    max_batch_size: int = 64
    prefix_cache: bool = True  # reuse the KV cache of a prefix shared within a group
    min_prefix: int = 8  # shorter shared prefixes are not worth a separate forward
    padding_side: str = "right"  # "left" works too (position ids then follow the mask)


class Scorer:
    """Scores prompts with a model and a head, batched under a token budget, sharing prefix KV caches."""

    def __init__(self, model: PreTrainedModel | PeftModel, spec: ModelSpec, head: Head, pad_id: int,
                 options: ScoringOptions = ScoringOptions(), progress: bool = True) -> None:
        self.model = model
        self.backbone = spec.backbone_of(unwrap(model))
        self.head = head
        self.pad_id = pad_id
        self.options = options
        self.progress = progress
        self.tokens_run = 0  # tokens through the backbone, for throughput figures
        # Called with each batch's prompts (right- or left-padded as options say) just before its forward, so that
        # position-aware hooks (knockouts) can find each row's spans. The plain path only: prefix_cache=False.
        self.on_batch: Callable[[list[TokenizedPrompt], bool], None] | None = None
        self.batch_tokens = options.max_batch_tokens or (16384 if self._device().type == "cuda" else 1024)

    @torch.inference_mode()
    def score(self, prompts: Sequence[TokenizedPrompt], groups: Sequence[Hashable] | None = None) -> np.ndarray:
        """(n,) float32 scores. Prompts with the same group key may share a prefix cache."""
        hidden = self.last_hidden(prompts, groups)
        scores = self.head(hidden).float().cpu().numpy()
        if not np.isfinite(scores).all():
            bad = int((~np.isfinite(scores)).sum())
            raise ModelError(f"{bad} of {len(scores)} scores are not finite{overflow_hint(hidden.dtype)}")
        return scores

    def last_hidden(self, prompts: Sequence[TokenizedPrompt], groups: Sequence[Hashable] | None = None) -> torch.Tensor:
        """(n, d_model) final-normed hidden state at each prompt's last token."""
        out: list[torch.Tensor | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc="scoring", unit="prompt", disable=not self.progress, leave=False)
        plain: list[int] = [] if self.options.prefix_cache else list(range(len(prompts)))
        for members in _group_indices(len(prompts), groups) if self.options.prefix_cache else []:
            prefix = _shared_prefix([prompts[i].input_ids for i in members])
            if len(members) > 1 and prefix >= self.options.min_prefix:
                self._run_with_prefix(prompts, members, prefix, out, bar)
            else:
                plain += members
        self._run_plain(prompts, plain, out, bar)
        bar.close()
        return torch.stack(out)  # type: ignore[arg-type]

    # -- the two paths ---------------------------------------------------------------------

    def _run_plain(self, prompts, indices, out, bar) -> None:
        left = self.options.padding_side == "left"
        for batch in self._batches(indices, [len(prompts[i]) for i in indices]):
            ids, mask, last = self._pad([prompts[i].input_ids for i in batch], left=left)
            if self.on_batch is not None:
                self.on_batch([prompts[i] for i in batch], left)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 on either side
            hidden = self.backbone(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
            self._collect(hidden, last, batch, out, bar)  # hidden: (b, seq, d_model)

    def _run_with_prefix(self, prompts, indices, prefix_len, out, bar) -> None:
        device = self._device()
        prefix = torch.tensor([prompts[indices[0]].input_ids[:prefix_len]], device=device)
        cache = self.backbone(input_ids=prefix, use_cache=True).cache
        self.tokens_run += prefix_len
        layers = [(k, v) for k, v, *_ in cache]
        suffixes = {i: prompts[i].input_ids[prefix_len:] for i in indices}
        for batch in self._batches(indices, [len(suffixes[i]) for i in indices], extra=prefix_len):
            ids, mask, last = self._pad([suffixes[i] for i in batch])
            b, seq = ids.shape
            batch_cache = DynamicCache(  # expand() is a view: the prefix is not copied per row
                [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in layers],
                config=self.backbone.config,
            )
            mask = torch.cat([torch.ones(b, prefix_len, dtype=mask.dtype, device=device), mask], dim=1)
            positions = torch.arange(prefix_len, prefix_len + seq, device=device).expand(b, -1)
            hidden = self.backbone(
                input_ids=ids, attention_mask=mask, position_ids=positions, cache=batch_cache, use_cache=True
            ).last_hidden_state
            self._collect(hidden, last, batch, out, bar)

    # -- helpers ---------------------------------------------------------------------------

    def _batches(self, indices: list[int], lengths: list[int], extra: int = 0) -> list[list[int]]:
        """Length-sorted batches whose padded size (rows x longest, + a shared prefix) fits the budget."""
        order = [i for _, i in sorted(zip(lengths, indices))]
        size = dict(zip(indices, lengths))
        batches: list[list[int]] = []
        for i in order:
            if batches:
                batch = batches[-1]
                rows = len(batch) + 1
                if rows <= self.options.max_batch_size and rows * (size[i] + extra) <= self.batch_tokens:
                    batch.append(i)
                    continue
            batches.append([i])
        return batches

    def _pad(self, sequences: list[Sequence[int]], left: bool = False):
        self.tokens_run += sum(len(s) for s in sequences)
        return tuple(t.to(self._device()) for t in pad_sequences(sequences, self.pad_id, left))

    def _collect(self, hidden, last, batch, out, bar) -> None:
        picked = hidden[torch.arange(len(batch), device=hidden.device), last]  # (b, d_model)
        for row, i in enumerate(batch):
            out[i] = picked[row]
        bar.update(len(batch))

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int, left: bool = False,
                  pad_to_multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, index of each row's last real token), padded on the right or the left to the longest sequence
    rounded up to a multiple of `pad_to_multiple_of` columns."""
    if pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}")
    longest = math.ceil(max(len(s) for s in sequences) / pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        cols = slice(longest - len(seq), longest) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq)
        mask[row, cols] = 1
    last = torch.tensor([longest - 1 if left else len(s) - 1 for s in sequences])
    return ids, mask, last


def unwrap(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The transformers model under a PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _group_indices(n: int, groups: Sequence[Hashable] | None) -> list[list[int]]:
    if groups is None:
        return [list(range(n))] if n else []
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(groups):
        members[key].append(i)
    return list(members.values())


def _shared_prefix(sequences: list[Sequence[int]]) -> int:
    """Longest common prefix, leaving at least one token of every sequence to run."""
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    for pos in range(limit):
        token = first[pos]
        if any(s[pos] != token for s in sequences):
            return pos
    return max(limit, 0)
