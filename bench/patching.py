"""Activation-patching sweep time: relscope's exact fast path vs its batched path vs one full forward per patch.

The sweep: every layer x {resid_pre, resid_post, attn, mlp} x {instruction, query, document, last, all}, then every
head at {last, query, all}, on SmolLM2-135M-Instruct (yes/no prompt) with pairs from relevance-mi/msmarco.jsonl.

    naive    one full forward of the corrupted prompt per patch, the clean activation read once per pair
             (what TransformerLens's get_act_patch_* functions do: a run_with_hooks per patched site)
    batched  relscope PatchingEngine: `batch` patch variants per forward, the clean run cached
    fast     relscope FastPatcher: layers >= l and positions >= p only, from the cached corrupted run
    atp      relscope attribution patching: one clean forward, one corrupted forward + backward (an estimate;
             its Pearson r with the exact effects is printed)

The naive time is measured on a seeded sample of sites and scaled to the full sweep (printed as such); the max
|delta IE| of each path against naive on those sites is printed beside the times.

    python bench/patching.py [--pairs 2] [--naive-sample 60]
"""

from __future__ import annotations

import argparse
import platform
import random
import time

import numpy as np
import torch

from relscope.analysis.patching.atp import attribution_patching
from relscope.analysis.patching.engine import PatchingEngine, all_sites, head_sites
from relscope.analysis.patching.fast import FastPatcher
from relscope.analysis.patching.pairs import build_pairs
from relscope.data.dataset import data_root
from relscope.data.groups import read_groups
from relscope.models.heads import build_head
from relscope.models.load import load_model
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--naive-sample", type=int, default=60, help="sites timed one forward each, per pair")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--skip", nargs="*", default=[], choices=["batched", "fast", "atp"],
                        help="paths not to time (batched is the slowest on a CPU)")
    args = parser.parse_args()
    torch.manual_seed(0)

    loaded = load_model("smollm2-135m-instruct", device="cpu")
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no"), 256)
    head = build_head("yes_no", loaded.model, builder)
    pairs, _ = build_pairs(read_groups(data_root() / "relevance-mi" / "msmarco.jsonl"), builder, args.pairs)
    engine = PatchingEngine(loaded.model, loaded.spec, head, args.batch)
    depth = loaded.model.config.num_hidden_layers
    sites = all_sites(depth) + head_sites(depth, engine.n_heads)
    sample = sorted(random.Random(0).sample(range(len(sites)), args.naive_sample))

    skip = set(args.skip)
    totals = {"naive (scaled)": 0.0, **{k: 0.0 for k in ("batched", "fast", "atp") if k not in skip}}
    worst = {k: 0.0 for k in ("batched", "fast") if k not in skip}
    exact, estimated = [], []
    for pair in pairs:
        naive, seconds = timed(lambda: np.array([engine.naive(pair, sites[i]) for i in sample]))
        totals["naive (scaled)"] += seconds * len(sites) / len(sample)
        for name, sweeper in (("batched", engine), ("fast", FastPatcher(engine))):
            if name in skip:
                continue
            result, seconds = timed(lambda: sweeper.sweep(pair, sites))
            totals[name] += seconds
            gap = result.clean - result.corrupted
            worst[name] = max(worst[name], float(np.max(np.abs((result.patched[sample] - naive) / gap))))
            if name == "fast" or "fast" in skip:
                exact.append(result.indirect_effects())
        if "atp" in totals:
            estimate, seconds = timed(lambda: attribution_patching(engine, pair, sites))
            totals["atp"] += seconds
            estimated.append(estimate.indirect_effects())
    tokens = np.mean([len(p.clean) for p in pairs])
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; SmolLM2-135M, "
          f"{len(pairs)} pairs of ~{tokens:.0f} tokens, {len(sites)} sites per pair "
          f"({depth} layers x 4 components x 5 position groups + {depth} x {engine.n_heads} heads x 3)")
    base = totals["naive (scaled)"]
    for name, seconds in totals.items():
        error = f"max |delta IE| vs naive {worst[name]:.1e}" if name in worst else "(the baseline)"
        if name == "atp" and exact:
            r = np.corrcoef(np.concatenate(exact), np.concatenate(estimated))[0, 1]
            error = f"Pearson r with exact IE {r:.3f}"
        print(f"{name:>15}: {seconds:8.1f} s  {seconds / len(pairs):7.1f} s/pair  {base / seconds:5.1f}x  {error}")


if __name__ == "__main__":
    main()
