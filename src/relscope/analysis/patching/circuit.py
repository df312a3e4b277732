"""`relscope circuit`: edge attribution of the relevance judgment (EAP-IG), circuits of the top edges and their
faithfulness by exact ablation (edges.py defines each).

Outputs: edges.csv (every edge's mean score over the pairs, as a share of the clean - corrupted gap, and its
standard deviation), faithfulness.csv/.md (for circuits of a growing share of the edges, the logit difference
recovered with the rest ablated), circuit.csv/.md (the smallest circuit within 1 - --target of the whole model's
logit difference, if one is),
faithfulness.png, circuit.png and manifest.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from relscope.analysis.patching.edges import EdgeGraph, faithfulness, mean_writer_values, recovered, top_edges
from relscope.analysis.patching.engine import PatchingEngine
from relscope.analysis.patching.job import load_patch_model, pair_groups
from relscope.analysis.patching.pairs import build_pairs
from relscope.analysis.patching.settings import CircuitSettings
from relscope.errors import DataError
from relscope.io import atomic_write_json
from relscope.manifest import build_manifest
from relscope.processes import process_device
from relscope.reports import plots
from relscope.reports.tables import write_table

# Circuit sizes, as shares of the graph's edges (0: every edge ablated; 1: the whole model).
SHARES = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
EDGES, FAITHFULNESS, CIRCUIT = "edges", "faithfulness", "circuit"


def circuit_job(settings: CircuitSettings, out: str | Path, progress: bool = True) -> dict:
    """Score every edge over the pairs, measure the faithfulness of the top-edge circuits, write the outputs."""
    from tqdm import tqdm

    out = Path(out)
    patch = settings.patch_settings()
    loaded, head, builder = load_patch_model(patch, process_device())
    engine = PatchingEngine(loaded.model, loaded.spec, head, settings.batch_size)
    graph = EdgeGraph(engine.model, engine.spec)
    pairs, report = build_pairs(pair_groups(settings.groups), builder, settings.max_pairs, settings.negative_kind)
    scored = [(pair, *graph.scores(engine, pair, settings.ig_steps))
              for pair in tqdm(pairs, desc="edge scores", disable=not progress)]
    kept = [(pair, s / (c - r), c, r) for pair, s, c, r in scored if abs(c - r) >= settings.min_gap and c != r]
    if not kept:
        raise DataError(f"no pair left: all {len(pairs)} have |LD_clean - LD_corrupted| below --min-gap "
                        f"{settings.min_gap}; lower it or use other groups")
    scores = np.stack([s for _, s, _, _ in kept])
    mean = scores.mean(0)
    n_edges = int(graph.edges.sum())
    sizes = sorted({round(share * n_edges) if share < 1 else n_edges for share in SHARES} | {1})
    circuits = np.stack([top_edges(mean, graph.edges, k) for k in sizes])
    means = mean_writer_values(graph, engine, [p for p, *_ in kept]) if settings.ablation == "mean" else None
    lds = np.stack([faithfulness(graph, engine, pair, circuits, settings.ablation, means)
                    for pair, *_ in tqdm(kept, desc="circuits", disable=not progress)])
    # Each pair's LDs oriented so that its clean run is the higher: relevance pairs' gaps differ in sign (a judge
    # can prefer the negative), and unaligned means over pairs could cancel to nothing.
    orientation = np.sign([c - r for _, _, c, r in kept])[:, None]
    curve = recovered(lds * orientation, settings.min_gap)  # the floor a pair's own gap must clear
    rows = [{"edges": k, "share of edges": k / n_edges, "recovered": float(r)} for k, r in zip(sizes, curve)]
    # Faithful: within 1 - target of the whole model's judgment, from below or above (a circuit that overshoots,
    # the rest ablated, is not the model's mechanism either).
    chosen = next((i for i, r in enumerate(curve) if abs(1 - r) <= 1 - settings.target and sizes[i] > 0), None)
    summary = {"pairs": len(pairs), "pairs kept": len(kept), "skipped_misaligned": report.skipped_misaligned,
               "edges": n_edges, "writers": len(graph.writers), "readers": len(graph.readers),
               "per_head": graph.per_head, "ablation": settings.ablation, "ig_steps": settings.ig_steps,
               "target": settings.target, "curve": rows, "ld_none": float(lds[:, 0].mean()),
               "ld_all": float(lds[:, -1].mean()), "ld_clean": float(np.mean([c for _, _, c, _ in kept])),
               "ld_corrupted": float(np.mean([r for _, _, _, r in kept])),
               "circuit_edges": sizes[chosen] if chosen is not None else None, "forwards": engine.forwards}
    _write(out, graph, mean, scores.std(0), rows, circuits[chosen] if chosen is not None else None, loaded.name,
           settings, len(kept))
    atomic_write_json(out / "manifest.json", build_manifest(
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()} | {
            "model": loaded.source, "template": builder.template.name}, {}, **summary))
    return summary


def _write(out: Path, graph: EdgeGraph, mean: np.ndarray, std: np.ndarray, curve: list[dict],
           circuit: np.ndarray | None, name: str, settings: CircuitSettings, pairs: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ranked = [(u, v) for u, v in zip(*np.unravel_index(np.argsort(-np.abs(mean.ravel()), kind="stable"), mean.shape))
              if graph.edges[u, v]]
    rows = [{"writer": graph.writers[u].name, "reader": graph.readers[v].name, "mean score": float(mean[u, v]),
             "std": float(std[u, v])} for u, v in ranked]
    write_table(rows, out / EDGES, f"Every edge's score (share of the clean - corrupted gap), {pairs} pairs")
    write_table(curve, out / FAITHFULNESS, f"Logit difference recovered by the top-k edges, the rest "
                f"{settings.ablation}-ablated ({pairs} pairs)")
    plots.save(plots.lines([100 * r["share of edges"] for r in curve[1:]],
                           {"recovered": [r["recovered"] for r in curve[1:]]},
                           f"{name}: faithfulness of the top-edge circuits ({settings.ablation} ablation, {pairs} "
                           "pairs)", "edges kept (% of the graph)", "share of LD recovered", log_x=True),
               out / f"{FAITHFULNESS}.png")
    if circuit is None:  # an earlier run's circuit in this folder must not pass for this one's
        for stale in (out / f"{CIRCUIT}.csv", out / f"{CIRCUIT}.md", out / f"{CIRCUIT}.png"):
            stale.unlink(missing_ok=True)
    else:
        kept = [row for row, (u, v) in zip(rows, ranked) if circuit[u, v]]
        band = f"{settings.target:.0%} to {2 - settings.target:.0%}"
        write_table(kept, out / CIRCUIT, f"The smallest top-edge circuit recovering {band} of the logit "
                    f"difference: {len(kept)} edges")
        plots.save(plots.circuit(kept, graph.depth, graph.n_heads, f"{name}: relevance circuit, {len(kept)} edges "
                                 f"({pairs} pairs)"), out / f"{CIRCUIT}.png")
