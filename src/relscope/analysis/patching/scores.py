"""Attention-score patching: one head's attention weights from one block of positions to another (e.g. from the
document tokens to the query tokens) set to the clean run's, everything else left as in the corrupted run.

A site is Site("scores", layer, "rows>columns", head): rows are the attending positions, columns the attended
ones (position groups). The query/document block is study 002's `query>document`, the query (target) attending to
the document (source), which the causal mask allows when the document comes first (`--layout
document-query-instruction`, the analyses' default); `document>query` is the option for a query-first layout.
`last>document` and `last>query` are the answer token's reading of each.

Exact without touching the attention kernel: head h's output at row i is z_i = sum_k A_ik v_k, and a patch at layer
l leaves layer l's values as in the corrupted run, so replacing A_ik by the clean A_ik for the columns k changes
z_i by sum_k (A_ik^clean - A_ik^corrupted) v_k. The patch is therefore an additive edit of the head's slice of
the o_proj input (the `z` site) and goes through the batched and the fast paths like any other site. As in
TransformerLens's pattern patching, the patched rows need not sum to one.

The weights and values are read through a registered attention function (`relscope_record`) that calls the
model's own eager attention and keeps what it returns; it is switched on for the recording forward only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from relscope.analysis.patching.sites import Site
from relscope.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

    from relscope.prompts.tokenize import TokenizedPrompt

RECORDING = "relscope_record"
SCORE_BLOCKS = ("query>document", "last>document", "last>query")  # the first as study 002 orients it


def score_blocks(query_block: str = SCORE_BLOCKS[0]) -> tuple[str, ...]:
    """The blocks patched per head: the query/document block in the orientation given, then the last token's two."""
    return (query_block, *SCORE_BLOCKS[1:])
_store: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's own eager attention; its weights and values kept for the layers being recorded."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, weights = eager(module, query, key, value, attention_mask, **kwargs)
    if _store is not None:
        _store[module.layer_idx] = (weights.detach(), value.detach())
    return output, weights


AttentionInterface.register(RECORDING, _recording_attention)
AttentionMaskInterface.register(RECORDING, eager_mask)


@dataclass(frozen=True)
class AttentionRecord:
    """One prompt's attention: weights[layer] (heads, seq, seq), row = attending position; values[layer]
    (kv_heads, seq, head_dim)."""

    weights: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]


@contextmanager
def recording_attention(model: PreTrainedModel) -> Iterator[dict]:
    """Inside, every forward keeps each layer's (weights, values) in the dict yielded, by layer index."""
    global _store
    before = model.config._attn_implementation
    model.set_attn_implementation(RECORDING)
    _store = {}
    try:
        yield _store
    finally:
        _store = None
        model.set_attn_implementation(before)


class RecordingEngine(Protocol):
    """What `record_attention` needs of an engine: a PatchingEngine (not imported: engine.py imports this module)."""

    model: PreTrainedModel
    backbone: nn.Module
    forwards: int  # forward passes run

    def ids(self, prompt: TokenizedPrompt, rows: int = 1) -> torch.Tensor:
        """(rows, seq) the prompt's token ids on the model's device."""
        ...


@torch.inference_mode()
def record_attention(engine: RecordingEngine, prompt: TokenizedPrompt) -> AttentionRecord:
    """One forward of `prompt` with every layer's attention weights and values kept."""
    with recording_attention(engine.model) as store:
        engine.backbone(input_ids=engine.ids(prompt))
    engine.forwards += 1
    return AttentionRecord({layer: w[0] for layer, (w, _) in store.items()},
                           {layer: v[0] for layer, (_, v) in store.items()})


def split_block(group: str) -> tuple[str, str]:
    """(rows, columns) of a block "rows>columns"; a ConfigError shows the form when it is not one."""
    rows, sep, columns = group.partition(">")
    if not sep or not rows or not columns:
        raise ConfigError(f"attention-score block {group!r} must read 'rows>columns', e.g. 'query>document'")
    return rows, columns


def score_sites(layers: Sequence[int], n_heads: int, blocks: Sequence[str] = SCORE_BLOCKS) -> list[Site]:
    """Every head of every layer for each block (block outermost, then layer, then head)."""
    for block in blocks:
        split_block(block)
    return [Site("scores", layer, block, h) for block in blocks for layer in layers for h in range(n_heads)]


def score_delta(site: Site, rows: torch.Tensor, columns: torch.Tensor, clean: AttentionRecord,
                corrupted: AttentionRecord) -> torch.Tensor:
    """(len(rows), head_dim): the change of the head's output at `rows` when its weights on `columns` are the clean
    run's."""
    weights = corrupted.weights[site.layer]
    values = corrupted.values[site.layer]
    kv_head = site.head // (weights.shape[0] // values.shape[0])  # grouped-query attention shares a value head
    change = (clean.weights[site.layer][site.head][rows][:, columns] - weights[site.head][rows][:, columns]).float()
    return change @ values[kv_head][columns].float()
