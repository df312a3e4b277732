"""Rerank throughput: relscope's scorer vs a naive Hugging Face loop, measured in the same run.

Naive baseline: batches of 10 candidates in run order, the full prompt every time,
full-vocabulary logits at every position, score = logit(yes) - logit(no) at the
last real token. Both score the very same token ids (the PromptBuilder's), so the
difference is only how the compute is spent.

    python bench/rerank.py [--queries 43] [--top-k 20] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from scipy.stats import kendalltau

from relscope.data.dataset import data_root, load_rerank_dataset, resolve_files
from relscope.evaluation.rerank import Reranker
from relscope.models.load import load_model


def naive_scores(model, tokenizer, prompts, yes: int, no: int, batch_size: int = 10) -> np.ndarray:
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        enc = tokenizer.pad({"input_ids": [list(p.input_ids) for p in batch]}, return_tensors="pt")
        logits = model(**enc).logits  # (batch, seq, vocab): every position, every token
        last = enc["attention_mask"].sum(-1) - 1
        picked = logits[torch.arange(len(batch)), last]
        out.append((picked[:, yes] - picked[:, no]).float().numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=43)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(data_root() / "trec-dl-2019"))
    args = parser.parse_args()

    data = load_rerank_dataset(resolve_files(args.data), args.top_k)
    qids = sorted(data.run)[: args.queries]
    loaded = load_model(args.model)
    loaded.tokenizer.padding_side = "right"
    reranker = Reranker.build(loaded, progress=False)
    prompts, groups = [], []
    for qid in qids:
        for doc in data.run[qid][: args.top_k]:
            prompts.append(reranker.builder.build(data.queries[qid], [data.passages[doc.pid]]))
            groups.append(qid)
    tokens = sum(len(p) for p in prompts)
    yes, no = reranker.builder.answer_ids

    with torch.inference_mode():
        naive_scores(loaded.model, loaded.tokenizer, prompts[:10], yes, no)  # warm-up
        t0 = time.perf_counter()
        naive = naive_scores(loaded.model, loaded.tokenizer, prompts, yes, no)
        t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = reranker.scorer.score(prompts, groups)
    t_ours = time.perf_counter() - t0

    taus, same = [], 0
    for qid in qids:
        idx = [i for i, g in enumerate(groups) if g == qid]
        taus.append(kendalltau(naive[idx], ours[idx]).statistic)
        same += list(np.argsort(-naive[idx], kind="stable")) == list(np.argsort(-ours[idx], kind="stable"))
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"torch threads={torch.get_num_threads()} device={loaded.device}")
    print(f"{len(qids)} queries x top-{args.top_k} = {len(prompts)} passages, {tokens} prompt tokens")
    print(f"{'':<28}{'passages/s':>12}{'tokens/s':>12}{'seconds':>10}")
    print(f"{'naive HF loop (baseline)':<28}{len(prompts) / t_naive:>12.2f}{tokens / t_naive:>12.1f}{t_naive:>10.1f}")
    print(f"{'relscope scorer':<28}{len(prompts) / t_ours:>12.2f}{tokens / t_ours:>12.1f}{t_ours:>10.1f}")
    print(f"speed-up: {t_naive / t_ours:.2f}x   max |score diff|: {np.abs(naive - ours).max():.2e}   "
          f"identical rankings: {same}/{len(qids)}   mean Kendall tau: {np.mean(taus):.4f}")


if __name__ == "__main__":
    main()
