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

Query and key patching (AtP*'s query and key nodes; Kramár, Lieberum, Shah & Nanda 2024, arXiv:2403.00745) is the
same kind of edit: a patch of head h's queries at rows R (Site("q", layer, group, h)), or of key/value head g's keys
at columns C (Site("k", layer, group, g)), changes only that layer's attention weights; the layer's values are the
corrupted run's. So the patched head outputs are the model's own eager attention run again on the recorded
queries, keys and values with the clean vectors written in (after any rotary embedding or query/key norm: the
vectors attention itself multiplies), and the patch is their difference from the same attention run on the recorded
vectors (both in float32, so rows the patch cannot reach are exactly 0). A key is shared
by the n_rep query heads of its group (grouped-query attention), so a key patch changes those heads' outputs.
`qk_change(linear=True)` gives the first-order change instead (the Jacobian of the attention in the query or key,
applied to clean - corrupted: what plain AtP's gradient sees), so AtP on these sites is AtP's linear estimate and
AtP*'s QK fix is the exact one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
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

Attend = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (query, key) -> (1, seq, heads, head_dim) output


@dataclass(frozen=True)
class LayerAttention:
    """One layer's attention in a recording forward of one prompt: what went in, its weights, and the model's own
    eager attention on these values and this mask, to run again with other queries or keys."""

    weights: torch.Tensor  # (1, heads, seq, seq)
    values: torch.Tensor  # (1, kv_heads, seq, head_dim)
    queries: torch.Tensor  # (1, heads, seq, head_dim), as attention multiplies them (after rotary, q-norm)
    keys: torch.Tensor  # (1, kv_heads, seq, head_dim)
    attend: Attend  # in the dtype of the queries given

    @cached_property
    def wide(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(queries, keys, their attention output) in float32 (float64 for a float64 model): the point every query
        and key change of this layer is taken from, computed once."""
        dtype = torch.promote_types(self.queries.dtype, torch.float32)
        queries, keys = self.queries.to(dtype), self.keys.to(dtype)
        return queries, keys, self.attend(queries, keys)


_store: dict[int, LayerAttention] | None = None


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's own eager attention; its inputs and outputs kept for the layers being recorded."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, weights = eager(module, query, key, value, attention_mask, **kwargs)
    if _store is not None:
        value = value.detach()

        def attend(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            # in the queries' dtype (float32 for the changes: a bf16 softmax would round small ones to 0); copies
            # outside inference mode, where these were recorded and autograd cannot take them
            copy = not torch.is_inference_mode_enabled()
            v = value.to(q.dtype, copy=copy)
            mask = attention_mask
            if isinstance(mask, torch.Tensor):
                mask = mask.to(q.dtype, copy=copy) if mask.is_floating_point() else mask.clone() if copy else mask
            return eager(module, q, k, v, mask, **kwargs)[0]

        _store[module.layer_idx] = LayerAttention(weights.detach(), value, query.detach(), key.detach(), attend)
    return output, weights


AttentionInterface.register(RECORDING, _recording_attention)
AttentionMaskInterface.register(RECORDING, eager_mask)


@dataclass(frozen=True)
class AttentionRecord:
    """One prompt's attention: weights[layer] (heads, seq, seq), row = attending position; values[layer]
    (kv_heads, seq, head_dim); layers[layer] everything recorded (for query and key patches)."""

    weights: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]
    layers: dict[int, LayerAttention]


@contextmanager
def recording_attention(model: PreTrainedModel) -> Iterator[dict]:
    """Inside, every forward keeps each layer's LayerAttention (weights, values, queries, keys) in the dict yielded,
    by layer index."""
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
    return AttentionRecord({layer: a.weights[0] for layer, a in store.items()},
                           {layer: a.values[0] for layer, a in store.items()}, dict(store))


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


def qk_change(site: Site, positions: torch.Tensor, clean: AttentionRecord, corrupted: AttentionRecord,
              linear: bool = False) -> torch.Tensor:
    """(seq, width): the change of the head outputs a query site (one head: width head_dim) or a key site (its
    group's n_rep heads side by side: width n_rep * head_dim) makes when its vectors at `positions` are the clean
    run's: exact (the attention run again), or with `linear` its first-order part (a Jacobian-vector product at the
    corrupted run). Zero at rows the patch cannot reach. Computed in float32 (float64 for a float64 model) whatever
    the model's dtype, as the difference of two runs of the same attention, so unreached rows are exactly 0."""
    layer = corrupted.layers[site.layer]
    which = "queries" if site.component == "q" else "keys"
    queries, keys, output = layer.wide
    before = queries if site.component == "q" else keys
    after = before.clone()
    after[0, site.head, positions] = getattr(clean.layers[site.layer], which)[0, site.head, positions].to(after.dtype)
    n_rep = layer.queries.shape[1] // layer.keys.shape[1]
    heads = slice(site.head, site.head + 1) if site.component == "q" else \
        slice(site.head * n_rep, (site.head + 1) * n_rep)
    if linear:
        change = _tangent(layer.attend, queries, keys, site.component, after - before)
    elif site.component == "q":
        change = layer.attend(after, keys) - output
    else:
        change = layer.attend(queries, after) - output
    return change[0, :, heads].flatten(1)


def _tangent(attend: Attend, queries: torch.Tensor, keys: torch.Tensor, component: str,
             direction: torch.Tensor) -> torch.Tensor:
    """The attention output's directional derivative in the queries (component q) or keys (k) at (queries, keys):
    forward-mode autograd through the model's own eager attention, outside inference mode (whose tensors
    forward-mode AD cannot carry)."""
    with torch.inference_mode(False):
        queries, keys, direction = queries.clone(), keys.clone(), direction.clone()
        if component == "q":
            return torch.func.jvp(lambda q: attend(q, keys), (queries,), (direction,))[1]
        return torch.func.jvp(lambda k: attend(queries, k), (keys,), (direction,))[1]
