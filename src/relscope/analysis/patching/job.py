"""`relscope patch`: the layer x component x position-group sweep over many pairs, with its tables and heatmaps.

Outputs: ie.npz (ie[pair, component, layer, group], the clean and corrupted logit differences, the qids),
ie_mean.csv, top_sites.{csv,md}, one heatmap per component (layer x position group), manifest.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from relscope.analysis.patching.engine import (
    HEAD_GROUPS,
    POSITION_GROUPS,
    PatchingEngine,
    all_sites,
    head_sites,
    indirect_effects,
)
from relscope.analysis.patching.atp import attribution_patching
from relscope.analysis.patching.fast import FastPatcher
from relscope.analysis.patching.hooks import COMPONENTS
from relscope.analysis.patching.pairs import build_pairs
from relscope.io import atomic_path, atomic_write_json, atomic_write_text
from relscope.manifest import build_manifest
from relscope.reports import plots
from relscope.reports.tables import to_csv, write_table


def patch_job(out: str | Path, groups: str | Path, model: str = "smollm2-135m-instruct", adapter: str | None = None,
              template: str | None = None, max_pairs: int = 20, negative_kind: str = "hard",
              components: Sequence[str] = COMPONENTS, positions: Sequence[str] = POSITION_GROUPS,
              layers: Sequence[int] | None = None, min_gap: float = 0.1, max_length: int = 256,
              batch_size: int = 16, top: int = 15, heads: bool = False, fast: bool = True, atp: bool = False,
              progress: bool = True) -> dict:
    from relscope.data.dataset import data_path
    from relscope.data.groups import read_groups
    from relscope.models.heads import build_head, default_head
    from relscope.models.load import load_model
    from relscope.models.specs.base import num_layers
    from relscope.prompts.templates import get_template
    from relscope.prompts.tokenize import PromptBuilder
    from relscope.training.checkpoint import load_trained

    out = Path(out)
    if adapter:
        loaded, head, meta = load_trained(adapter, model=model, template=template, merge=True)
        builder = PromptBuilder(loaded.tokenizer, get_template(meta["template"]), max_length)
    else:
        loaded = load_model(model)
        builder = PromptBuilder(loaded.tokenizer, get_template(template or "yes_no"), max_length)
        head = build_head(default_head(builder.template), loaded.model, builder)
    depth = num_layers(loaded.model.config)
    layers = list(layers) if layers is not None else list(range(depth))
    pairs, report = build_pairs(read_groups(data_path(str(groups))), builder, max_pairs, negative_kind)
    sites = [s for s in all_sites(depth, components, positions) if s.layer in layers]
    engine = PatchingEngine(loaded.model, loaded.spec, head, batch_size)
    sweeper = FastPatcher(engine) if fast else engine  # equal results (tested); the fast one recomputes less
    results = [sweeper.sweep(pair, sites) for pair in tqdm(pairs, desc="pairs", disable=not progress)]
    ie, excluded = indirect_effects(results, min_gap)
    shape = (len(components), len(layers), len(positions))
    grid = ie.reshape(len(ie), *shape)  # all_sites orders component, layer, group
    out.mkdir(parents=True, exist_ok=True)
    kept = [r for r in results if r.qid not in excluded]
    with atomic_path(out / "ie.npz") as tmp, tmp.open("wb") as f:
        np.savez(f, ie=grid, components=np.array(components), layers=np.array(layers), groups=np.array(positions),
                 qids=np.array([r.qid for r in kept]), ld_clean=np.array([r.clean for r in kept]),
                 ld_corrupted=np.array([r.corrupted for r in kept]))
    mean, std = grid.mean(axis=0), grid.std(axis=0)
    rows = [{"component": c, "layer": layer, "positions": g, "mean IE": float(mean[i, j, k]),
             "std": float(std[i, j, k]), "pairs": len(grid)}
            for i, c in enumerate(components) for j, layer in enumerate(layers) for k, g in enumerate(positions)]
    atomic_write_text(out / "ie_mean.csv", to_csv(rows))
    ranked = sorted((r for r in rows if r["positions"] != "all"), key=lambda r: -abs(r["mean IE"]))[:top]
    write_table(ranked, out / "top_sites", f"Top {top} sites by |mean IE| ({len(grid)} pairs; position group "
                f"'all' left out)")
    for i, component in enumerate(components):
        plots.save(plots.heatmap(mean[i], [str(layer) for layer in layers], list(positions),
                                 f"{loaded.name}: mean IE, {component} ({len(grid)} pairs)", "indirect effect",
                                 xlabel="position group", ylabel="layer", diverging=True),
                   out / f"ie_{component}.png")
    if atp:  # the first-order estimate beside the exact effects, and how well it agrees
        estimates = [attribution_patching(engine, pair, sites) for pair in pairs if pair.qid not in excluded]
        ie_atp = np.stack([r.indirect_effects() for r in estimates]).reshape(grid.shape)
        with atomic_path(out / "ie_atp.npz") as tmp, tmp.open("wb") as f:
            np.savez(f, ie=ie_atp)
        agreement = {"pearson_per_site": float(np.corrcoef(grid.ravel(), ie_atp.ravel())[0, 1]),
                     "pearson_of_means": float(np.corrcoef(grid.mean(0).ravel(), ie_atp.mean(0).ravel())[0, 1])}
    if heads:
        _head_sweep(sweeper, engine.n_heads, pairs, excluded, layers, out, loaded.name, progress)
    summary = {"pairs": report.pairs, "skipped_misaligned": report.skipped_misaligned,
               "skipped_no_negative": report.skipped_no_negative, "excluded_small_gap": excluded,
               "min_gap": min_gap, "forwards": engine.forwards, "sites": len(sites)}
    if atp:
        summary["atp_vs_exact"] = agreement
    atomic_write_json(out / "manifest.json", build_manifest(
        {"model": loaded.source, "adapter": adapter, "template": builder.template.name, "groups": str(groups),
         "negative_kind": negative_kind, "components": list(components), "positions": list(positions),
         "layers": layers, "max_pairs": max_pairs, "max_length": max_length}, {}, **summary))
    return summary


def _head_sweep(sweeper, n_heads: int, pairs, excluded: list[str], layers: list[int], out: Path, name: str,
                progress: bool) -> None:
    """Per-head patching (each head's slice of the o_proj input) at the last token, the query and all positions."""
    sites = [s for s in head_sites(max(layers) + 1, n_heads) if s.layer in layers]
    kept = [p for p in pairs if p.qid not in excluded]
    results = [sweeper.sweep(pair, sites) for pair in tqdm(kept, desc="pairs (heads)", disable=not progress)]
    ie, _ = indirect_effects(results, 0.0)
    grid = ie.reshape(len(ie), len(HEAD_GROUPS), len(layers), n_heads)
    with atomic_path(out / "ie_heads.npz") as tmp, tmp.open("wb") as f:
        np.savez(f, ie=grid, groups=np.array(HEAD_GROUPS), layers=np.array(layers),
                 qids=np.array([r.qid for r in results]))
    for g, group in enumerate(HEAD_GROUPS):
        plots.save(plots.heatmap(grid[:, g].mean(axis=0), [str(layer) for layer in layers],
                                 [str(h) for h in range(n_heads)],
                                 f"{name}: mean IE per head, {group} positions ({len(grid)} pairs)", "indirect effect",
                                 xlabel="head", ylabel="layer", diverging=True), out / f"ie_heads_{group}.png")
