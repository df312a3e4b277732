"""Knockouts by mean ablation (`relscope knockout MODEL [ADAPTER] --ie-heads PATCH/ie_heads.npz`).

Chosen heads' outputs (their slices of the o_proj input) at chosen position groups are replaced by their mean over a
reference set of prompts (or by zero), and the model is scored as a relevance judge (F1 over labelled prompts:
pointwise relevant vs not, pairwise A vs B; and pair accuracy) and as a reranker (nDCG@10 on a dev run).

The head sets are study 002's Table 1: Doc-N, Query-N, Inst-N and Last-N are the N heads with the highest mean IE at
that position group of a head-patching run, each ablated at its own positions; Mixed-4N is their union, each head at
its own set's positions; Random-4N are 4N heads drawn at random (seeded), ablated at every position. N is 20 of the
1,024 heads of a 32-layer, 32-head model, and by default the same share of a smaller model's heads. Heads are ranked
by signed IE (the study's "highest indirect effect"); `rank: magnitude` ranks by |IE|, and `positions` ablates every
set at the positions given instead of its own. Each set is reported with its relative change from the full model and
a paired bootstrap confidence interval over queries.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from relscope.analysis.intervals import mean_of, relative_drop_ci
from relscope.analysis.patching.hooks import site_hooks
from relscope.analysis.patching.settings import KnockoutSettings
from relscope.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torch import nn

    from relscope.analysis.patching.engine import PatchingEngine
    from relscope.models.specs import ModelSpec
    from relscope.prompts.tokenize import TokenizedPrompt

KNOCKOUT, KNOCKOUT_FIGURE = "knockout", "knockout.png"  # the table written (.csv and .md) and its bar chart
HEAD_SET, FULL_MODEL = "head set", "full model"  # the table's first column, and its first row's name there
F1, PAIR_ACCURACY, NDCG10 = "F1", "pair accuracy", "nDCG@10"  # the metrics, each a column
CHANGE, CI_LOW, CI_HIGH = "change", "CI low", "CI high"  # per metric, the columns f"{metric} {CHANGE}" etc.
HEAD_SET_GROUPS = {"document": "Doc", "query": "Query", "instruction": "Inst", "last": "Last"}  # 002's set names
STUDY_SHARE = 20 / 1024  # 002: 20 heads per set of Llama-3.1-8B's 32 x 32
NO_EFFECT = 1e-6  # |mean IE| at or below this is no effect
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadSet:
    """A knockout: each (layer, head) ablated at the positions of its group."""

    name: str
    targets: tuple[tuple[int, int, str], ...]  # (layer, head, position group)

    @property
    def heads(self) -> tuple[tuple[int, int], ...]:
        """The distinct (layer, head) pairs knocked out, in order."""
        return tuple(sorted({(layer, head) for layer, head, _ in self.targets}))


def study_size(n_heads_total: int) -> int:
    """N of 002's Table 1 for a model of this many heads: 20 of 1,024, the same share here (at least 1)."""
    return max(1, round(STUDY_SHARE * n_heads_total))


def head_sets(ie_heads: str, size: int | None = None, random_draws: int = 3, seed: int = 0,
              by_magnitude: bool = False, positions: Sequence[str] | None = None) -> list[HeadSet]:
    """002's Table 1 sets from a head-patching run: the top-`size` heads by mean IE (signed, or |IE| with
    `by_magnitude`) at each position group the run has, each at its own positions; Mixed, their union; Random draws
    of as many heads at every position. `positions` ablates every set there instead."""
    from relscope.analysis.patching.artefacts import load_ie_heads

    saved = load_ie_heads(ie_heads)
    if saved.method != "exact":
        logging.getLogger(__name__).warning("%s: head sets ranked by %s estimates, not exact patching", ie_heads,
                                            saved.method)
    groups, layers = saved.groups, saved.layers
    mean = saved.ie.mean(axis=0)  # (groups, layers, heads)
    rank = np.abs(mean) if by_magnitude else mean
    n_heads = mean.shape[2]
    size = study_size(len(layers) * n_heads) if size is None else size
    if size > len(layers) * n_heads:
        raise ConfigError(f"--size {size} is more than the {len(layers) * n_heads} heads patched")
    if not any(g in groups for g in HEAD_SET_GROUPS):
        raise ConfigError(f"{ie_heads}: its head patching has none of the groups {', '.join(HEAD_SET_GROUPS)}; "
                          "run `relscope patch --heads` with them")

    def top(values: np.ndarray) -> list[tuple[int, int]]:
        order = np.argsort(-values, axis=None, kind="stable")[:size]
        return sorted((layers[i // n_heads], int(i % n_heads)) for i in order)

    def at(heads: Sequence[tuple[int, int]], group: str) -> tuple[tuple[int, int, str], ...]:
        return tuple((layer, head, g) for layer, head in heads for g in (positions or (group,)))

    # A group where no head has an effect (the query when it precedes the first token that differs) has no top
    # heads: ranking its zeros would pick the first heads in storage order.
    sets = []
    for group, label in HEAD_SET_GROUPS.items():
        if group not in groups:
            continue
        if rank[groups.index(group)].max() <= NO_EFFECT:
            log.info("no head has a positive effect at the %s positions: no %s-%d set", group, label, size)
            continue
        sets.append(HeadSet(f"{label}-{size}", at(top(rank[groups.index(group)]), group)))
    if not sets:  # every set but the random ones would be heads in storage order
        raise DataError(f"{ie_heads}: no head has an effect at {', '.join(groups)}; patch with --heads at other "
                        "--head-positions (document, query, instruction, last) or over other pairs")
    mixed = tuple(dict.fromkeys(target for s in sets for target in s.targets))
    sets.append(HeadSet(f"Mixed-{len(sets) * size}", mixed))
    every = [(layer, h) for layer in layers for h in range(n_heads)]
    count = min(len(sets[:-1]) * size, len(every))
    rng = random.Random(seed)
    sets += [HeadSet(f"Random-{count} #{i + 1}", at(sorted(rng.sample(every, count)), "all"))
             for i in range(random_draws)]
    return sets


def group_masks(prompts: Sequence, groups: Sequence[str], left: bool) -> dict[str, torch.Tensor]:
    """(batch, longest) True at each row's positions of each group, for prompts padded on the right or left."""
    longest = max(len(p) for p in prompts)
    masks = {g: torch.zeros(len(prompts), longest, dtype=torch.bool) for g in groups}
    for row, prompt in enumerate(prompts):
        offset = longest - len(prompt) if left else 0
        for g in groups:
            masks[g][row, [offset + p for p in prompt.positions(g)]] = True
    return masks


class HeadAblation:
    """Inside `active()`, each target head's output at its group's positions is its reference mean (zero when `means`
    is None). `set_batch` (the Scorer's on_batch) tells each row's positions; a single prompt needs none."""

    def __init__(self, model: nn.Module, spec: ModelSpec, targets: Sequence[tuple[int, int, str]], head_dim: int,
                 means: dict[tuple[int, str], torch.Tensor] | None = None) -> None:
        self.model, self.spec, self.head_dim, self.means = model, spec, head_dim, means
        self.groups = list(dict.fromkeys(group for _, _, group in targets))
        self.by_layer: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for layer, head, group in targets:
            self.by_layer[layer].append((head, group))
        self.masks: dict[str, torch.Tensor] | None = None

    @classmethod
    def at(cls, model: nn.Module, spec: ModelSpec, heads: Sequence[tuple[int, int]], groups: Sequence[str],
           head_dim: int,
           means: dict[tuple[int, str], torch.Tensor] | None = None) -> HeadAblation:
        """Every one of `heads` ablated at every one of `groups`."""
        return cls(model, spec, [(layer, head, g) for layer, head in heads for g in groups], head_dim, means)

    def set_batch(self, prompts: Sequence, left: bool = False) -> None:
        """Take the next batch's prompts (padded on the `left` or right) so the hooks know each row's positions."""
        self.masks = group_masks(prompts, self.groups, left)

    def _ablate(self, layer: int):
        def fn(z: torch.Tensor) -> torch.Tensor:
            z = z.clone()
            for head, group in self.by_layer[layer]:
                mask = self.masks[group].to(z.device)
                columns = slice(head * self.head_dim, (head + 1) * self.head_dim)
                value = 0.0 if self.means is None else self.means[layer, group][columns].to(z.dtype)
                z[..., columns][mask] = value
            return z
        return fn

    @contextmanager
    def active(self) -> Iterator[None]:
        """Knock the heads out inside (hooks on their layers' o_proj inputs), restore the model after."""
        with site_hooks(self.model, self.spec, {("z", layer): self._ablate(layer) for layer in self.by_layer}):
            yield


@torch.inference_mode()
def reference_means(engine: PatchingEngine, prompts: Sequence[TokenizedPrompt], layers: Sequence[int],
                    groups: Sequence[str]) -> dict[tuple[int, str], torch.Tensor]:
    """The mean o_proj input at each layer over the positions of each group, over the reference prompts."""
    sums: dict[tuple[int, str], torch.Tensor] = {}
    counts: dict[tuple[int, str], int] = defaultdict(int)
    for prompt in prompts:
        acts, _ = engine.run(prompt, [("z", layer) for layer in layers])
        for layer in layers:
            for g in groups:
                where = prompt.positions(g)
                total = acts[("z", layer)][where].float().sum(0)
                sums[layer, g] = sums[layer, g] + total if (layer, g) in sums else total
                counts[layer, g] += len(where)
    return {key: sums[key] / max(counts[key], 1) for key in sums}


def _f1(per_query: Sequence[tuple[np.ndarray, np.ndarray]], index: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    labels = np.concatenate([per_query[i][0] for i in index])
    predicted = np.concatenate([per_query[i][1] for i in index])
    return float(f1_score(labels, predicted, zero_division=0.0))


def _pair_accuracy(per_query: Sequence[tuple[np.ndarray, ...]], index: np.ndarray) -> float:
    """The share of (relevant, non-relevant) pairs of a query scored in the right order, averaged over queries.

    Threshold-free: F1 needs the logit difference's sign to mean something, and a small base model that
    answers "yes" to everything has F1 2/3 whatever is knocked out; the order of its scores still moves."""
    def accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
        return float(np.mean(scores[labels == 1][:, None] > scores[labels == 0][None, :]))
    return float(np.mean([accuracy(per_query[i][0], per_query[i][2]) for i in index]))


def _judgments(scores: np.ndarray, labels: np.ndarray, qids: list[str]) -> list[tuple[np.ndarray, ...]]:
    """Per query: (labels, predictions, scores), a prediction being logit difference > 0 (yes, or A)."""
    order = sorted(set(qids))
    rows = {q: [i for i, x in enumerate(qids) if x == q] for q in order}
    return [(labels[rows[q]], (scores[rows[q]] > 0).astype(int), scores[rows[q]]) for q in order]


def knockout_job(settings: KnockoutSettings, out: str | Path, progress: bool = True) -> list[dict]:
    """Score the full model and each head set knocked out: judgment F1 (and dev nDCG@10 with `settings.data`)."""
    from relscope.analysis.anatomy import NDCG
    from relscope.analysis.examples import labelled_prompts
    from relscope.analysis.patching.engine import PatchingEngine
    from relscope.analysis.patching.job import load_patch_model, pair_groups
    from relscope.data.dev import load_dev_run
    from relscope.evaluation.metrics import evaluate_run
    from relscope.evaluation.rerank import Reranker, rerank
    from relscope.io import atomic_write_json
    from relscope.manifest import build_manifest
    from relscope.models.scoring import Scorer, ScoringOptions
    from relscope.processes import process_device
    from relscope.reports import plots
    from relscope.reports.tables import write_table

    ie_heads, positions, zero = settings.ie_heads, settings.positions, settings.zero
    random_draws, max_groups, dev = settings.random_draws, settings.max_groups, settings.dev_settings()
    sets = head_sets(ie_heads, settings.size, random_draws, by_magnitude=settings.rank == "magnitude",
                     positions=positions)
    size = len(sets[0].heads)
    loaded, head, builder = load_patch_model(settings.patch_settings(), process_device())
    examples = labelled_prompts(pair_groups(settings.groups), builder, max_groups, settings.negative_kind)
    prompts, labels, qids = [e.prompt for e in examples], np.array([e.label for e in examples]), [e.qid for e in
                                                                                                  examples]
    engine = PatchingEngine(loaded.model, loaded.spec, head)
    layers = sorted({layer for s in sets for layer, _ in s.heads})
    groups = sorted({group for s in sets for _, _, group in s.targets})
    means = None if zero else reference_means(engine, prompts, layers, groups)
    options = ScoringOptions(prefix_cache=False)  # the ablation hooks need each row's own positions
    scorer = Scorer(loaded.model, loaded.spec, head, loaded.tokenizer.pad_token_id, options, progress=False)
    dataset = load_dev_run(dev) if dev else None
    # the dev run is read with the same scorer, in the prompt layout the heads were found in (builder's)
    reranker = Reranker(loaded, builder, scorer) if dev else None

    def measure(ablation: HeadAblation | None) -> dict:
        scorer.on_batch = ablation.set_batch if ablation else None
        with ablation.active() if ablation else nullcontext():
            result = {"judgments": _judgments(scorer.score(prompts), labels, qids)}
            if reranker:
                per_query = evaluate_run(dataset.qrels, rerank(reranker, dataset, dev.top_k).run, (NDCG,))[1]
                result["ndcg"] = np.array([per_query[q][NDCG] for q in sorted(per_query)])
        return result

    full = measure(None)
    rows = [_row(FULL_MODEL, (), full, full)]
    for head_set in sets:
        ablation = HeadAblation(loaded.model, loaded.spec, head_set.targets, engine.head_dim, means)
        rows.append(_row(head_set.name, head_set.heads, measure(ablation), full))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "zero" if zero else "mean"
    where = "+".join(positions) if positions else "their own (Random: all)"
    write_table(rows, out / KNOCKOUT, f"{kind}-ablation of head sets at {where} positions ({builder.template.layout} "
                f"prompts, the dev run's too): judgment "
                f"F1 and pair accuracy over {len(prompts)} prompts"
                + (f", nDCG@10 on {dev.data} top-{dev.top_k}" if dev else "")
                + "; drops relative to the full model, 95% bootstrap CI over queries")
    names = [r[HEAD_SET] for r in rows[1:]]
    metrics = (F1, PAIR_ACCURACY) + ((NDCG10,) if dev else ())
    series = {f"{m} {CHANGE}": [r[f"{m} {CHANGE}"] for r in rows[1:]] for m in metrics}
    errors = {f"{m} {CHANGE}": ([r[f"{m} {CI_LOW}"] for r in rows[1:]], [r[f"{m} {CI_HIGH}"] for r in rows[1:]])
              for m in metrics}
    plots.save(plots.bars(names, series, f"{loaded.name}: knocking out {size} heads ({kind} ablation)",
                          "relative change", errors), out / KNOCKOUT_FIGURE)
    atomic_write_json(out / "manifest.json", build_manifest(
        {"model": loaded.source, "adapter": settings.adapter, "template": builder.template.name,
         "layout": builder.template.layout, "ie_heads": ie_heads, "size": size, "rank": settings.rank,
         "positions": list(positions) if positions else "each set at its own group (Random: all)", "ablation": kind,
         "random_draws": random_draws, "max_groups": max_groups, "dev": dev and vars(dev)},
        {}, head_sets={s.name: [list(t) for t in s.targets] for s in sets}))
    return rows


def _row(name: str, heads, result: dict, full: dict) -> dict:
    """One table row; the full model's own changes are 0 by definition (no interval to draw)."""
    def change_ci(key, statistic):
        return (0.0, 0.0, 0.0) if result is full else relative_drop_ci(full[key], result[key], statistic)

    row = {HEAD_SET: name, "heads": len(heads)}
    every = np.arange(len(result["judgments"]))
    for metric, statistic in ((F1, _f1), (PAIR_ACCURACY, _pair_accuracy)):
        change, low, high = change_ci("judgments", statistic)
        row.update({metric: statistic(result["judgments"], every), f"{metric} {CHANGE}": change,
                    f"{metric} {CI_LOW}": low, f"{metric} {CI_HIGH}": high})
    if "ndcg" in result:
        change, low, high = change_ci("ndcg", mean_of)
        row.update({NDCG10: float(result["ndcg"].mean()), f"{NDCG10} {CHANGE}": change,
                    f"{NDCG10} {CI_LOW}": low, f"{NDCG10} {CI_HIGH}": high})
    return row
