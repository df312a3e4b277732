"""Rerank a first-stage run: score its top-k with an LLM, keep the rest below, in order."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from relscope.data.dataset import RerankDataset
from relscope.data.types import Run, ScoredDoc, sort_run
from relscope.models.heads import Head, build_head, default_head
from relscope.models.load import LoadedModel
from relscope.models.scoring import Scorer, ScoringOptions
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder


@dataclass
class Reranker:
    loaded: LoadedModel
    builder: PromptBuilder
    scorer: Scorer

    @classmethod
    def build(cls, loaded: LoadedModel, template: str = "yes_no", head: str | Head | None = None,
              max_length: int = 512, options: ScoringOptions = ScoringOptions(),
              progress: bool = True) -> Reranker:
        """`head`: a registered name (default: the template's) or a built Head (e.g. a trained one)."""
        builder = PromptBuilder(loaded.tokenizer, get_template(template), max_length)
        head_module = head if isinstance(head, Head) else \
            build_head(head or default_head(builder.template), loaded.model, builder)
        scorer = Scorer(loaded.model, loaded.spec, head_module, loaded.tokenizer.pad_token_id, options, progress)
        return cls(loaded, builder, scorer)

    @property
    def pairwise(self) -> bool:
        """Whether the template compares two passages per prompt (scores are then aggregated over pairs)."""
        return self.builder.template.kind == "pairwise"


@dataclass
class RerankResult:
    run: Run
    scored: int  # passages scored by the model
    prompts: int  # forward rows (k(k-1) per query for pairwise)
    seconds: float
    tokens: int
    truncated: int  # prompts whose passage was shortened


def rerank(reranker: Reranker, dataset: RerankDataset, top_k: int) -> RerankResult:
    """Pointwise: sort by score. Pairwise: every ordered pair, aggregated by symmetric sum (duoT5)."""
    start, tokens_before = time.perf_counter(), reranker.scorer.tokens_run
    prompts, keys, owners = [], [], []
    candidates = {}
    for qid, docs in dataset.run.items():
        with_text = [d for d in docs[:top_k] if d.pid in dataset.passages]
        candidates[qid] = with_text
        texts = [dataset.passages[d.pid] for d in with_text]
        for pair in _prompt_pairs(len(texts), reranker.pairwise):
            prompts.append(reranker.builder.build(dataset.queries[qid], [texts[i] for i in pair]))
            keys.append(qid)
            owners.append((qid, pair))
    scores = reranker.scorer.score(prompts, keys)
    per_query = _aggregate(candidates, owners, scores, reranker.pairwise)
    run = {qid: _merge(dataset.run[qid], candidates[qid], per_query[qid]) for qid in dataset.run}
    return RerankResult(
        run=run,
        scored=sum(len(c) for c in candidates.values()),
        prompts=len(prompts),
        seconds=time.perf_counter() - start,
        tokens=reranker.scorer.tokens_run - tokens_before,
        truncated=sum(p.truncated_tokens > 0 for p in prompts),
    )


def _prompt_pairs(n: int, pairwise: bool) -> list[tuple[int, ...]]:
    if not pairwise:
        return [(i,) for i in range(n)]
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def _aggregate(candidates, owners, scores: np.ndarray, pairwise: bool) -> dict[str, np.ndarray]:
    totals = {qid: np.zeros(len(c), dtype=np.float64) for qid, c in candidates.items()}
    for (qid, pair), score in zip(owners, scores):
        if not pairwise:
            totals[qid][pair[0]] = score
        else:  # P(A wins) credits A; 1 - P(A wins) credits B
            p_first = 1.0 / (1.0 + np.exp(-float(score)))
            totals[qid][pair[0]] += p_first
            totals[qid][pair[1]] += 1.0 - p_first
    return totals


def _merge(first_stage: list[ScoredDoc], scored: list[ScoredDoc], scores: np.ndarray) -> list[ScoredDoc]:
    """Reranked passages first; unscored ones (no text, or beyond top-k) below, in first-stage order."""
    reranked = sort_run([ScoredDoc(d.pid, float(s)) for d, s in zip(scored, scores)])
    done = {d.pid for d in scored}
    rest = [d for d in first_stage if d.pid not in done]
    floor = min((d.score for d in reranked), default=0.0)
    return reranked + [ScoredDoc(d.pid, floor - 1.0 - i) for i, d in enumerate(rest)]
