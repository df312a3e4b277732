"""Edge attribution of the relevance judgment and its circuits (EAP, Syed et al. 2023; EAP-IG, Hanna, Pezzelle &
Belinkov 2024), with each circuit's faithfulness measured by exact ablation.

The graph is the residual stream's. Writers: the embeddings, every head (its share of the attention output,
z_h W_O,h^T; for Gemma 2/3, whose attention output is normed before it is added, one attention node a layer) and
every MLP. Readers: every layer's attention input, MLP input, and the logits (the final norm's input). An edge
u -> v for every writer before a reader (under GPT-NeoX's parallel blocks a layer's attention does not feed its own
MLP). A reader's input is the sum of its writers' outputs, so an edge can be cut or kept alone: the reader gets
another value of that one writer, while the residual stream itself, and every other reader, are untouched.

Score (relscope's denoising orientation, as everywhere): s(u -> v) = sum over positions of
(w_u(clean) - w_u(corrupted)) . dLD/dx_v, the gradient taken at the reader's own input (through its branch only)
and averaged over `steps` points of the corrupted -> clean line of the embeddings, as in ig.py (1 step: EAP on the
corrupted run). EAP-IG's own scores are noising (corrupted - clean, clean base run); ours are their denoising
counterpart. Scores are divided by the pair's gap LD_clean - LD_corrupted, like an IE.

Faithfulness (exact): the clean prompt runs with every edge outside the circuit carrying its writer's ablated value
instead of the live one: the writer's mean over every position of the pairs' prompts (mean ablation, the default)
or the pair's corrupted value (interchange, EAP-IG's `patching`). Recovered = (LD(C) - LD(none)) / (LD(all) -
LD(none)); LD(all) is LD_clean exactly, and with interchange LD(none) is LD_corrupted (both tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from relscope.analysis.patching.atp import embeddings_output
from relscope.analysis.patching.engine import PatchingEngine
from relscope.analysis.patching.ig import embeddings, path_points
from relscope.analysis.patching.pairs import PatchPair
from relscope.errors import DataError


@dataclass(frozen=True)
class Node:
    kind: str  # writers: emb, head, attn, mlp; readers: attn_in, mlp_in, logits
    layer: int  # -1 for the embeddings; the number of layers for the logits
    head: int | None = None

    @property
    def name(self) -> str:
        """emb, a3.h5, a3 (a layer's attention), m3, a3.in, m3.in, logits."""
        if self.kind in ("emb", "logits"):
            return self.kind
        base = f"{'m' if self.kind.startswith('mlp') else 'a'}{self.layer}"
        if self.kind == "head":
            return f"{base}.h{self.head}"
        return base + (".in" if self.kind.endswith("_in") else "")


class EdgeGraph:
    """The writers, readers and edges of one model, and the hooks that read and set them."""

    def __init__(self, model: nn.Module, spec) -> None:
        self.model, self.spec = model, spec
        text = model.config.get_text_config()
        self.depth, self.n_heads = int(text.num_hidden_layers), int(text.num_attention_heads)
        self.per_head = spec.attention_write_norm is None  # a head's write is linear in its output
        parallel = bool(getattr(text, "use_parallel_residual", False))
        self.writers, self.readers = [Node("emb", -1)], []
        for layer in range(self.depth):
            self.readers.append(Node("attn_in", layer))
            self.writers += ([Node("head", layer, h) for h in range(self.n_heads)] if self.per_head
                             else [Node("attn", layer)])
            self.readers.append(Node("mlp_in", layer))
            self.writers.append(Node("mlp", layer))
        self.readers.append(Node("logits", self.depth))
        self.edges = np.array([[_feeds(u, v, parallel) for v in self.readers] for u in self.writers])

    # Hooks ---------------------------------------------------------------------------------------------------

    def _layer(self, layer: int) -> nn.Module:
        return self.spec.layer_list(self.model)[layer]

    def _reader_module(self, node: Node) -> nn.Module:
        if node.kind == "logits":
            return self.spec.resolve(self.model, self.spec.final_norm)
        path = self.spec.attention_read_norm if node.kind == "attn_in" else self.spec.mlp_read_norm
        return self.spec.resolve(self._layer(node.layer), path)

    def _writer_hooks(self, stack: ExitStack, on_write: Callable[[int, torch.Tensor], None]) -> None:
        """Call on_write(writer index, (batch, seq, d) output) as each writer runs (a layer's heads in order)."""
        index = {node: i for i, node in enumerate(self.writers)}

        def output_hook(i: int):
            return lambda _m, _a, out: on_write(i, out[0] if isinstance(out, tuple) else out)

        embed = self.model.get_input_embeddings()
        stack.callback(embed.register_forward_hook(output_hook(0)).remove)
        for layer in range(self.depth):
            if self.per_head:
                stack.callback(self.spec.projection_of(self.model, layer, "o").register_forward_pre_hook(
                    self._heads_hook(layer, index[Node("head", layer, 0)], on_write)).remove)
            else:
                norm = self.spec.resolve(self._layer(layer), self.spec.attention_write_norm)
                stack.callback(norm.register_forward_hook(output_hook(index[Node("attn", layer)])).remove)
            mlp = (self.spec.resolve(self._layer(layer), self.spec.mlp_write_norm) if self.spec.mlp_write_norm
                   else self.spec.mlp_of(self.model, layer))
            stack.callback(mlp.register_forward_hook(output_hook(index[Node("mlp", layer)])).remove)

    def _heads_hook(self, layer: int, first: int, on_write: Callable[[int, torch.Tensor], None]):
        projection = self.spec.projection_of(self.model, layer, "o")

        def hook(_module, args):
            z = args[0]
            heads = z.unflatten(-1, (self.n_heads, -1))  # (batch, seq, heads, head_dim)
            weight = projection.weight.unflatten(1, (self.n_heads, -1))  # (d, heads, head_dim)
            writes = torch.einsum("bshk,dhk->hbsd", heads, weight.to(z.dtype))  # the bias is no head's
            for h in range(self.n_heads):
                on_write(first + h, writes[h])
        return hook

    def _reader_hooks(self, stack: ExitStack, on_read: Callable[[int, torch.Tensor], torch.Tensor]) -> None:
        """Replace each reader's input by on_read(reader index, input)."""
        for j, node in enumerate(self.readers):
            def pre(_module, args, j=j):
                return (on_read(j, args[0]), *args[1:])
            stack.callback(self._reader_module(node).register_forward_pre_hook(pre).remove)

    # Runs ----------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def writer_values(self, engine: PatchingEngine, ids: torch.Tensor) -> torch.Tensor:
        """(writers, seq, d) every writer's output on one prompt (float32 at least)."""
        values: list[torch.Tensor | None] = [None] * len(self.writers)
        with ExitStack() as stack:
            self._writer_hooks(stack, lambda i, out: values.__setitem__(i, out[0].to(torch.promote_types(
                out.dtype, torch.float32))))
            engine.backbone(input_ids=ids)
        engine.forwards += 1
        return torch.stack(values)

    def reader_gradients(self, engine: PatchingEngine, pair: PatchPair, steps: int) -> tuple[torch.Tensor, float]:
        """(readers, seq, d) dLD/d(reader input) averaged over the IG path's points, and LD_corrupted."""
        start = embeddings(engine, engine.ids(pair.corrupted)).double()
        step = embeddings(engine, engine.ids(pair.clean)).double() - start
        alphas = path_points(steps).to(start.device)
        total = None
        for first in range(0, steps, engine.batch_size):
            chunk = alphas[first:first + engine.batch_size]
            inputs: dict[int, torch.Tensor] = {}

            def keep(j: int, x: torch.Tensor) -> torch.Tensor:
                inputs[j] = x.view_as(x)  # its own node: the gradient through this reader's branch only
                return inputs[j]

            with torch.enable_grad(), embeddings_output(engine, start + chunk[:, None, None] * step), \
                    ExitStack() as stack:
                self._reader_hooks(stack, keep)
                lds = engine.head(engine.backbone(
                    input_ids=engine.ids(pair.corrupted, len(chunk))).last_hidden_state[:, -1])
                grads = torch.autograd.grad(lds.sum(), [inputs[j] for j in range(len(self.readers))])
            engine.forwards += 1
            if first == 0:
                ld_corrupted = float(lds[0].detach())
            summed = torch.stack([g.float().sum(0) for g in grads])
            total = summed if total is None else total + summed
        return total / steps, ld_corrupted

    def scores(self, engine: PatchingEngine, pair: PatchPair, steps: int) -> tuple[np.ndarray, float, float]:
        """(writers, readers) edge scores of one pair (0 where there is no edge), LD_clean and LD_corrupted."""
        if len(pair.clean) != len(pair.corrupted):
            raise DataError(f"pair {pair.qid}: edge attribution needs prompts of one length")
        difference = (self.writer_values(engine, engine.ids(pair.clean))
                      - self.writer_values(engine, engine.ids(pair.corrupted)))
        gradients, ld_corrupted = self.reader_gradients(engine, pair, steps)
        scores = torch.einsum("usd,vsd->uv", difference.double(), gradients.double()).cpu().numpy()
        ld_clean = float(engine.logit_diffs(engine.ids(pair.clean))[0])
        return np.where(self.edges, scores, 0.0), ld_clean, ld_corrupted

    @torch.inference_mode()
    def run_with_edges(self, engine: PatchingEngine, ids: torch.Tensor, ablated: torch.Tensor,
                       kept: np.ndarray) -> np.ndarray:
        """LD of each row of a batch of one prompt (`ids` (1, seq)) in which edge (u, v) carries the live output of
        u where kept[row, u, v], else ablated[u] ((writers, seq, d), or (writers, d): at every position).
        Edges outside the graph are ignored."""
        rows = len(kept)
        cut = torch.as_tensor(self.edges[None] & ~kept, dtype=torch.float32, device=engine.device)
        pending = [None] * len(self.readers)  # what each reader's input gets added, accumulated as writers run
        targets = [np.flatnonzero(self.edges[i] & ~kept[:, i].all(0)) for i in range(len(self.writers))]

        def on_write(i: int, out: torch.Tensor) -> None:
            if not len(targets[i]):
                return
            wide = torch.promote_types(out.dtype, torch.float32)  # ~1,000 terms a reader: never summed in bf16
            change = ablated[i].to(wide) - out.to(wide)  # (rows, seq, d)
            for j in targets[i]:
                term = cut[:, i, j, None, None].to(wide) * change
                pending[j] = term if pending[j] is None else pending[j] + term

        def on_read(j: int, x: torch.Tensor) -> torch.Tensor:
            return x if pending[j] is None else x + pending[j].to(x.dtype)

        with ExitStack() as stack:
            self._writer_hooks(stack, on_write)
            self._reader_hooks(stack, on_read)
            hidden = engine.backbone(input_ids=ids.expand(rows, -1)).last_hidden_state[:, -1]
        engine.forwards += 1
        return engine.head(hidden).double().cpu().numpy()


def _feeds(writer: Node, reader: Node, parallel: bool) -> bool:
    """Whether the writer's output is part of the reader's input."""
    if writer.kind == "emb" or reader.kind == "logits" or writer.layer < reader.layer:
        return True
    return (writer.layer == reader.layer and reader.kind == "mlp_in" and writer.kind in ("head", "attn")
            and not parallel)


def top_edges(scores: np.ndarray, edges: np.ndarray, k: int) -> np.ndarray:
    """(writers, readers) bool: the k edges of largest |score| (ties broken by position, stably)."""
    flat = np.flatnonzero(edges)
    order = flat[np.argsort(-np.abs(scores.ravel()[flat]), kind="stable")[:k]]
    chosen = np.zeros(scores.size, dtype=bool)
    chosen[order] = True
    return chosen.reshape(scores.shape)


def mean_writer_values(graph: EdgeGraph, engine: PatchingEngine, pairs: Sequence[PatchPair]) -> torch.Tensor:
    """(writers, d) each writer's mean output over every position of every prompt of the pairs (mean ablation)."""
    total, count = None, 0
    for pair in pairs:
        for prompt in (pair.clean, pair.corrupted):
            values = graph.writer_values(engine, engine.ids(prompt))
            total = values.sum(1) if total is None else total + values.sum(1)
            count += values.shape[1]
    return total / count


def faithfulness(graph: EdgeGraph, engine: PatchingEngine, pair: PatchPair, circuits: np.ndarray,
                 ablation: str, means: torch.Tensor | None) -> np.ndarray:
    """LD of the clean prompt with each circuit ((n, writers, readers) bool) kept and every other edge ablated;
    batched engine.batch_size circuits a forward."""
    ablated = means if ablation == "mean" else graph.writer_values(engine, engine.ids(pair.corrupted))
    ids = engine.ids(pair.clean)
    out = [graph.run_with_edges(engine, ids, ablated, circuits[start:start + engine.batch_size])
           for start in range(0, len(circuits), engine.batch_size)]
    return np.concatenate(out)


def recovered(ld: np.ndarray, floor: float) -> np.ndarray:
    """(LD(C) - LD(none)) / (LD(all) - LD(none)) of the means over pairs for each circuit: `ld` is (pairs,
    circuits), the first circuit empty and the last the whole graph, all from the same batched runs, each pair's
    oriented so that its clean run is the higher (circuit.py);
    NaN throughout when the whole model's LD is within `floor` of the ablated one's (pairs' gaps that cancel, or
    an ablation that changes nothing): a ratio over that is noise, as an IE over a small gap is."""
    mean = ld.mean(0)
    whole = mean[-1] - mean[0]
    if not abs(whole) >= max(floor, 1e-6 * max(1.0, abs(mean[-1]))):
        return np.full(len(mean), np.nan)
    return (mean - mean[0]) / whole
