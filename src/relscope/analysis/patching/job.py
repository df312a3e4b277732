"""`relscope patch`: the layer x component x position-group sweep over many pairs, with its tables and heatmaps.

Outputs: ie.npz (ie[pair, component, layer, group], the clean and corrupted logit differences, the qids),
ie_mean.csv, top_sites.{csv,md}, one heatmap per component (layer x position group), manifest.json; with --heads
ie_heads.npz and a layer x head heatmap per position group; with --scores ie_scores.npz and one per attention block;
with --atp ie_atp.npz and its agreement with the exact effects. Each pair's result is kept in pairs/ as it is done,
so an interrupted or widened run resumes (PairCache).

Under `accelerate launch` each process patches every n-th pair and the main process gathers and writes them, in
the order one process would have produced (each pair is independent, so the numbers are the same; tested).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

import numpy as np

from relscope.analysis.patching.atp import attribution_patching
from relscope.analysis.patching.engine import (
    HEAD_GROUPS,
    POSITION_GROUPS,
    PairResult,
    PatchingEngine,
    Site,
    all_sites,
    head_sites,
    indirect_effects,
)
from relscope.analysis.patching.fast import FastPatcher
from relscope.analysis.patching.hooks import COMPONENTS
from relscope.analysis.patching.pairs import PatchPair, build_pairs
from relscope.analysis.patching.scores import SCORE_BLOCKS, score_sites
from relscope.io import atomic_path, atomic_write_json, atomic_write_text
from relscope.manifest import build_manifest
from relscope.processes import over_items, process_device, process_state
from relscope.reports import plots
from relscope.reports.tables import to_csv, write_table


@dataclass(frozen=True)
class PatchSettings:
    groups: str = "$RELSCOPE_DATA/relevance-mi/msmarco.jsonl"  # group jsonl, or a TREC folder (qrels + passages)
    model: str = "smollm2-135m-instruct"
    adapter: str | None = None
    template: str | None = None  # default: the adapter's, else yes_no
    max_pairs: int | None = 20
    negative_kind: str = "hard"
    perturbation: str = "negative"  # see pairs.PERTURBATIONS
    components: Sequence[str] = COMPONENTS
    positions: Sequence[str] = POSITION_GROUPS
    layers: Sequence[int] | None = None
    min_gap: float = 0.1
    max_length: int = 256
    batch_size: int = 16
    top: int = 15
    heads: bool = False
    head_positions: Sequence[str] = HEAD_GROUPS
    scores: bool = False
    atp: bool = False
    fast: bool = True
    dtype: str = "auto"


def patch_job(out: str | Path, settings: PatchSettings, progress: bool = True) -> dict:
    state = process_state()
    out = Path(out)
    loaded, head, builder = load_patch_model(settings, process_device())
    depth = len(loaded.spec.layer_list(loaded.model))
    layers = list(settings.layers) if settings.layers is not None else list(range(depth))
    pairs, report = build_pairs(pair_groups(settings.groups), builder, settings.max_pairs, settings.negative_kind,
                                perturbation=settings.perturbation)
    sites = [s for s in all_sites(depth, settings.components, settings.positions) if s.layer in layers]
    engine = PatchingEngine(loaded.model, loaded.spec, head, settings.batch_size)
    sweeper = FastPatcher(engine) if settings.fast else engine  # equal results (tested); the fast one recomputes less
    show = progress and state.is_main_process
    fingerprint = {"model": loaded.source, "adapter": settings.adapter, "template": builder.template.name,
                   "dtype": settings.dtype}
    cache = PairCache(out / "pairs", fingerprint)
    results = over_items(cache.wrap(lambda pair: sweeper.sweep(pair, sites), "sites", sites), pairs, "pairs", show)
    ie, excluded = indirect_effects(results, settings.min_gap)
    kept_pairs = [p for p in pairs if p.qid not in excluded]
    grid = ie.reshape(len(ie), len(settings.components), len(layers), len(settings.positions))  # all_sites' order
    summary = {"pairs": report.pairs, "skipped_misaligned": report.skipped_misaligned,
               "skipped_no_negative": report.skipped_no_negative, "excluded_small_gap": excluded,
               "min_gap": settings.min_gap, "sites": len(sites), "processes": state.num_processes}
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _write_grid(out, grid, [r for r in results if r.qid not in excluded], settings, layers, loaded.name)
    if settings.atp:  # the first-order estimate beside the exact effects, and how well it agrees
        estimates = over_items(cache.wrap(lambda pair: attribution_patching(engine, pair, sites), "atp", sites),
                               kept_pairs, "AtP", show)
        summary["atp_vs_exact"] = _agreement(out, grid, estimates, state.is_main_process)
    n_heads = engine.n_heads
    if settings.heads:
        groups = list(settings.head_positions)
        _head_sweep(sweeper, [s for s in head_sites(depth, n_heads, groups) if s.layer in layers], groups,
                    kept_pairs, layers, out, loaded.name, "heads", show, cache)
    if settings.scores:
        _head_sweep(sweeper, score_sites(layers, n_heads), SCORE_BLOCKS, kept_pairs, layers, out, loaded.name,
                    "scores", show, cache)
    summary["forwards"] = engine.forwards  # this process's
    if state.is_main_process:
        recorded = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}
        atomic_write_json(out / "manifest.json", build_manifest(
            {**recorded, "model": loaded.source, "template": builder.template.name, "layers": layers}, {},
            **summary))
    return summary


class PairCache:
    """Each pair's result kept in `folder` as it is done: a rerun (after a crash, or over more pairs) recomputes only
    the pairs whose prompts, sites or model settings changed. A file's name carries the hash of all of them."""

    def __init__(self, folder: Path, fingerprint: dict) -> None:
        self.folder, self.fingerprint = folder, fingerprint

    def path(self, pair: PatchPair, what: str, sites: Sequence[Site]) -> Path:
        key = json.dumps({**self.fingerprint, "what": what, "sites": [astuple(s) for s in sites],
                          "clean": list(pair.clean.input_ids), "corrupted": list(pair.corrupted.input_ids)},
                         sort_keys=True)
        return self.folder / f"{what}-{pair.qid}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"

    def wrap(self, fn: Callable[[PatchPair], PairResult], what: str, sites: Sequence[Site]):
        def cached(pair: PatchPair) -> PairResult:
            path = self.path(pair, what, sites)
            if path.is_file():
                with np.load(path) as saved:
                    return PairResult(pair.qid, float(saved["clean"]), float(saved["corrupted"]), saved["patched"])
            result = fn(pair)
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, tmp.open("wb") as f:
                np.savez(f, clean=result.clean, corrupted=result.corrupted, patched=result.patched)
            return result
        return cached


def load_patch_model(settings: PatchSettings, device: str):
    from relscope.models.heads import build_head, default_head
    from relscope.models.load import load_model
    from relscope.prompts.templates import get_template
    from relscope.prompts.tokenize import PromptBuilder
    from relscope.training.checkpoint import load_trained

    if settings.adapter:
        loaded, head, meta = load_trained(settings.adapter, dtype=settings.dtype, device=device, merge=True,
                                          model=settings.model, template=settings.template)
        return loaded, head, PromptBuilder(loaded.tokenizer, get_template(meta["template"]), settings.max_length)
    loaded = load_model(settings.model, dtype=settings.dtype, device=device)
    builder = PromptBuilder(loaded.tokenizer, get_template(settings.template or "yes_no"), settings.max_length)
    return loaded, build_head(default_head(builder.template), loaded.model, builder), builder


def pair_groups(source: str):
    """Groups from a Tevatron group jsonl, or built from a TREC folder's qrels and passages."""
    from relscope.training.data import load_training_groups

    return load_training_groups((source,), negatives=7)


def _write_grid(out: Path, grid: np.ndarray, kept: list[PairResult], settings: PatchSettings, layers: list[int],
                name: str) -> None:
    components, positions = list(settings.components), list(settings.positions)
    with atomic_path(out / "ie.npz") as tmp, tmp.open("wb") as f:
        np.savez(f, ie=grid, components=np.array(components), layers=np.array(layers), groups=np.array(positions),
                 qids=np.array([r.qid for r in kept]), ld_clean=np.array([r.clean for r in kept]),
                 ld_corrupted=np.array([r.corrupted for r in kept]))
    mean, std = grid.mean(axis=0), grid.std(axis=0)
    rows = [{"component": c, "layer": layer, "positions": g, "mean IE": float(mean[i, j, k]),
             "std": float(std[i, j, k]), "pairs": len(grid)}
            for i, c in enumerate(components) for j, layer in enumerate(layers) for k, g in enumerate(positions)]
    atomic_write_text(out / "ie_mean.csv", to_csv(rows))
    ranked = sorted((r for r in rows if r["positions"] != "all"), key=lambda r: -abs(r["mean IE"]))[:settings.top]
    write_table(ranked, out / "top_sites", f"Top {settings.top} sites by |mean IE| ({len(grid)} pairs; position "
                f"group 'all' left out)")
    for i, component in enumerate(components):
        plots.save(plots.heatmap(mean[i], [str(layer) for layer in layers], positions,
                                 f"{name}: mean IE, {component} ({len(grid)} pairs)", "indirect effect",
                                 xlabel="position group", ylabel="layer", diverging=True),
                   out / f"ie_{component}.png")


def _agreement(out: Path, grid: np.ndarray, estimates: list[PairResult], write: bool) -> dict:
    ie_atp = np.stack([r.indirect_effects() for r in estimates]).reshape(grid.shape)
    if write:
        with atomic_path(out / "ie_atp.npz") as tmp, tmp.open("wb") as f:
            np.savez(f, ie=ie_atp)
    return {"pearson_per_site": float(np.corrcoef(grid.ravel(), ie_atp.ravel())[0, 1]),
            "pearson_of_means": float(np.corrcoef(grid.mean(0).ravel(), ie_atp.mean(0).ravel())[0, 1])}


def _head_sweep(sweeper, sites, groups: Sequence[str], pairs, layers: list[int], out: Path, name: str, what: str,
                progress: bool, cache: PairCache) -> None:
    """Patch every head of every layer for each group (per-head outputs at a position group, or attention-score
    blocks); sites ordered group, layer, head. Writes ie_<what>.npz and one layer x head heatmap per group."""
    n_heads = len(sites) // (len(groups) * len(layers))
    results = over_items(cache.wrap(lambda pair: sweeper.sweep(pair, sites), what, sites), pairs, f"pairs ({what})",
                         progress)
    if not process_state().is_main_process:
        return
    ie, _ = indirect_effects(results, 0.0)
    grid = ie.reshape(len(ie), len(groups), len(layers), n_heads)
    with atomic_path(out / f"ie_{what}.npz") as tmp, tmp.open("wb") as f:
        np.savez(f, ie=grid, groups=np.array(groups), layers=np.array(layers),
                 qids=np.array([r.qid for r in results]))
    label = "positions" if what == "heads" else "attention weights"
    for g, group in enumerate(groups):
        plots.save(plots.heatmap(grid[:, g].mean(axis=0), [str(layer) for layer in layers],
                                 [str(h) for h in range(n_heads)],
                                 f"{name}: mean IE per head, {group} {label} ({len(grid)} pairs)", "indirect effect",
                                 xlabel="head", ylabel="layer", diverging=True),
                   out / f"ie_{what}_{group.replace('>', '_to_')}.png")
