"""Activation-patching sweep time: relscope's exact fast path vs its batched path vs one full forward per patch.

The sweep: every layer x {resid_pre, resid_post, attn, mlp} x {instruction, query, document, last, all}, then every
head at {last, query, all}, on SmolLM2-135M-Instruct (yes/no prompt) with pairs from relevance-mi/msmarco.jsonl.

    naive    one full forward of the corrupted prompt per patch, the clean activation read once per pair
             (what TransformerLens's get_act_patch_* functions do: a run_with_hooks per patched site)
    batched  relscope PatchingEngine: `batch` patch variants per forward, the clean run cached
    fast     relscope FastPatcher: layers >= l and positions >= p only, from the cached corrupted run
    atp, atp-star, relp, ig, atp-nearest   relscope's attribution estimators (--estimators): attribution
             patching, AtP*'s GradDrop (|IE|, validated against the exact |IE|), relevance patching (AtP with LRP
             rules), integrated gradients (--ig-steps) and atp-nearest (residual sites linearised about the nearer
             of the two runs); each validated against the exact effects
             of the fast path per site type (Pearson, Spearman, top-20 recall; analysis/patching/validation.py),
             with its seconds a pair and those seconds in forward-equivalents (one plain forward of the corrupted
             prompt, timed on every pair)
    tl       TransformerLens 4.x's own patching (generic_activation_patch, the engine of get_act_patch_*) through a
             TransformerBridge over the same model (bench/tl_patching.py); needs `pip install -e .[bench]`

The fast path's work is also put against the hardware: the FLOPs an exact sweep cannot avoid (each site re-runs
only the layers from its own and the positions from its first changed one: the fast path's plan; matmuls and
attention only, norms and activations left out), their rate in the fast path's seconds, and this CPU's fp32 matmul
rate measured in the same run (torch.mm of 2048 x 2048 matrices, the same threads).

The naive and TransformerLens times are measured on a seeded sample of sites per pair and scaled to the full sweep
(printed as such); the max |delta IE| of each path against naive on those sites is printed beside the times, and
TransformerLens's against relscope's fast path run under the same (eager) attention the bridge switches to.

    python bench/patching.py [--pairs 2] [--naive-sample 60] [--skip batched] [--estimators atp relp ig]
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import time

import numpy as np
import torch

from relscope.analysis.patching.engine import PatchingEngine
from relscope.analysis.patching.estimators import estimate
from relscope.analysis.patching.fast import FastPatcher, first_difference
from relscope.analysis.patching.validation import agreement
from relscope.analysis.patching.pairs import build_pairs
from relscope.analysis.patching.sites import ESTIMATORS, UNSIGNED_ESTIMATORS, all_sites, head_sites
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
    parser.add_argument("--skip", nargs="*", default=[], choices=["naive", "batched", "fast", "tl"],
                        help="paths not to time (batched is the slowest on a CPU)")
    # atp-qk differs from atp on query/key sites only, which this sweep does not patch (`relscope patch --qk` does)
    parser.add_argument("--estimators", nargs="*", default=[e for e in ESTIMATORS if e != "atp-qk"],
                        choices=ESTIMATORS, help="attribution estimators validated against the fast path (none: "
                        "--estimators)")
    parser.add_argument("--ig-steps", type=int, default=5)
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
    if "naive" in skip:
        skip.add("batched")  # both are checked against naive
    totals = {k: 0.0 for k in ("naive (scaled)", "batched", "fast") if k.split()[0] not in skip}
    worst = {k: 0.0 for k in ("batched", "fast") if k not in skip and "naive" not in skip}
    exact = []
    estimated = {name: [] for name in args.estimators}
    estimate_seconds = {name: 0.0 for name in args.estimators}
    forward_seconds = 0.0
    for pair in pairs:
        naive = None
        if "naive" not in skip:
            naive, seconds = timed(lambda: np.array([engine.naive(pair, sites[i]) for i in sample]))
            totals["naive (scaled)"] += seconds * len(sites) / len(sample)
        for name, sweeper in (("batched", engine), ("fast", FastPatcher(engine))):
            if name in skip:
                continue
            result, seconds = timed(lambda: sweeper.sweep(pair, sites))
            totals[name] += seconds
            if naive is not None:
                gap = result.clean - result.corrupted
                worst[name] = max(worst[name], float(np.max(np.abs((result.patched[sample] - naive) / gap))))
            if name == "fast" or "fast" in skip:
                exact.append(result.indirect_effects())
        forward_seconds += timed(lambda: engine.corrupted_logit_diff(pair))[1]
        for name in args.estimators:
            result, seconds = timed(lambda: estimate(name, engine, pair, sites, args.ig_steps))
            estimate_seconds[name] += seconds
            estimated[name].append(result.indirect_effects())
    if "tl" not in skip:
        totals["TransformerLens (scaled)"], worst["TransformerLens (scaled)"], against_float64 = _transformer_lens(
            loaded, engine, builder, pairs, sites, sample)
        print(f"on the sampled sites, max |delta IE| against a float64 copy of the model (norms, rotary and softmax "
              f"in float32, as Hugging Face runs them): relscope "
              f"fast {against_float64['fast']:.1e}, TransformerLens {against_float64['tl']:.1e}")
    if "fast" in totals:
        flops = sum(unavoidable_flops(FastPatcher(engine), loaded.model.config, pair, sites) for pair in pairs)
        peak = matmul_gflops()
        print(f"exact sweep: {flops / 1e9:.1f} GFLOP unavoidable, {flops / 1e9 / totals['fast']:.1f} GFLOP/s in the "
              f"fast path, {100 * flops / 1e9 / totals['fast'] / peak:.0f}% of this CPU's fp32 matmul rate "
              f"({peak:.0f} GFLOP/s)")
    tokens = np.mean([len(p.clean) for p in pairs])
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; SmolLM2-135M, "
          f"{len(pairs)} pairs of ~{tokens:.0f} tokens, {len(sites)} sites per pair "
          f"({depth} layers x 4 components x 5 position groups + {depth} x {engine.n_heads} heads x 3)")
    base = totals.get("TransformerLens (scaled)") or totals.get("naive (scaled)") or 1.0
    print("speed-up against TransformerLens when it ran, else against naive")
    for name, seconds in totals.items():
        error = ""
        if name.startswith("TransformerLens"):
            error = f"max |delta IE| vs relscope fast (eager attention) {worst[name]:.1e}"
        elif name in worst:
            error = f"max |delta IE| vs naive {worst[name]:.1e}"
        print(f"{name:>24}: {seconds:8.1f} s  {seconds / len(pairs):7.1f} s/pair  {base / seconds:6.1f}x  {error}")
    if exact and args.estimators:
        _print_validation(np.stack(exact), estimated, estimate_seconds, forward_seconds, sites, len(pairs))


def unavoidable_flops(patcher: FastPatcher, config, pair, sites) -> float:
    """Matmul and attention FLOPs of re-running each distinct patch from its start layer and its first changed position
    (the fast path's plan, FastPatcher.plan: sites that change nothing, make the clean run or repeat another's patch
    run nothing), one
    multiply-add counted as 2."""
    text = config.get_text_config()
    d, layers, heads = text.hidden_size, text.num_hidden_layers, text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    mlp = (3 if getattr(text, "model_type", "") != "gpt_neox" else 2) * d * text.intermediate_size
    per_token = 2 * (d * (heads + 2 * kv) * head_dim + heads * head_dim * d + mlp)
    length = len(pair.corrupted)
    total = 0.0
    for (start, first), members in patcher.plan(pair, sites).reruns.items():
        rows = length - first
        keys = sum(t + 1 for t in range(first, length))  # causal: row t reads t + 1 keys
        total += len(members) * (layers - start) * (rows * per_token + 4 * heads * head_dim * keys)
    return total


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate with torch's current threads: the best of a few 2048^3 products."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b))[1] for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _print_validation(exact: np.ndarray, estimated: dict, seconds: dict, forward_seconds: float, sites,
                      pairs: int) -> None:
    """Each estimator's agreement with the fast path's exact IEs per site type, and its cost."""
    print(f"estimators against the exact IE of the fast path ({pairs} pairs; one plain forward "
          f"{forward_seconds / pairs * 1000:.0f} ms)")
    print(f"{'estimator':>10} {'site type':>12} {'sites':>6} {'pearson':>8} {'spearman':>8} {'of means':>8} "
          f"{'top-20':>7} {'s/pair':>7} {'fwd-eq':>7}")
    for name, values in estimated.items():
        for row in agreement(exact, np.stack(values), sites, unsigned=name in UNSIGNED_ESTIMATORS):
            print(f"{name:>10} {row['site type']:>12} {row['sites']:>6} {row['pearson']:8.3f} {row['spearman']:8.3f} "
                  f"{row['pearson of means']:8.3f} {row['top-20 recall']:7.2f} {seconds[name] / pairs:7.2f} "
                  f"{seconds[name] / forward_seconds:7.1f}")


def _transformer_lens(loaded, engine, builder, pairs, sites, sample) -> tuple[float, float, dict[str, float]]:
    """TransformerLens's seconds for the whole sweep (scaled from the sample), its max |delta IE| against relscope's
    fast path on the sampled sites, both under eager attention (which the bridge needs), and each one's max |delta IE|
    against a float64 copy of the model (its matmuls in float64; Hugging Face still runs its norms, rotary and
    softmax in float32, so the reference is closer to exact than either, not exact). relscope runs first: the
    bridge replaces the model's attention forward with its own hooked one, which the fast path's cached keys and
    values do not go through."""
    from tl_patching import boot_bridge, tl_logit_diffs

    from relscope.models.load import gguf_to_cache, resolve_source

    chosen = [sites[i] for i in sample]
    loaded.model.set_attn_implementation("eager")
    ours = [FastPatcher(engine).sweep(pair, chosen) for pair in pairs]
    model64 = copy.deepcopy(loaded.model).double()
    engine64 = PatchingEngine(model64, loaded.spec, build_head("yes_no", model64, builder), engine.batch_size)
    float64 = [engine64.sweep(pair, chosen) for pair in pairs]
    del engine64, model64
    bridge = boot_bridge(loaded, str(gguf_to_cache(resolve_source("smollm2-135m-instruct")[1])))
    seconds_total, worst = 0.0, 0.0
    against = {"fast": 0.0, "tl": 0.0}
    for pair, reference, truth in zip(pairs, ours, float64):
        tl, seconds = timed(lambda: tl_logit_diffs(bridge, engine.head, pair, chosen))
        seconds_total += seconds * len(sites) / len(sample)
        worst = max(worst, float(np.max(np.abs((tl - reference.patched) / reference.gap))))
        for name, patched in (("fast", reference.patched), ("tl", tl)):
            against[name] = max(against[name], float(np.max(np.abs((patched - truth.patched) / truth.gap))))
    return seconds_total, worst, against


if __name__ == "__main__":
    main()
