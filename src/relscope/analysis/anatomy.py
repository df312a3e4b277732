"""LoRA anatomy (`relscope lora ...`): metrics across checkpoints, rank sweeps, ablations, delta statistics.

Each job writes <name>.csv, <name>.md (shaped like the source study's table), <name>.png and
manifest.json into its output folder, and the jobs that rerank write <name>.per_query.csv (every dev measure of
every query, one row per checkpoint or variant they measured; a step 0 whose means the study's zero-shot stage passed
in is not there) so any two rows can be compared with a paired interval; the ablation also writes
ablation_contrasts.csv, study 000's claims as paired differences. The names are the constants below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from relscope.analysis.intervals import difference_ci, mean_of, relative_drop_ci
from relscope.analysis.lora_surgery import MODULE_PRESETS, adapted_sites, delta_stats, keep_only, parse_layers, select
from relscope.analysis.settings import (
    AblateSettings,
    CheckpointsSettings,
    StatsSettings,
    SweepRankSettings,
    dev_fields,
)
from relscope.config import to_mapping
from relscope.data.dataset import RerankDataset
from relscope.data.dev import DevSettings, load_dev_run
from relscope.errors import ConfigError
from relscope.evaluation.metrics import evaluate_run
from relscope.evaluation.rerank import Reranker, rerank
from relscope.io import atomic_write_json, atomic_write_text
from relscope.manifest import build_manifest
from relscope.models.adapters import load_trained, load_weights, resolve_max_length
from relscope.models.scoring import ScoringOptions
from relscope.models.specs.base import PROJECTIONS, num_layers
from relscope.reports import plots
from relscope.reports.tables import to_csv, write_table
from relscope.training.checkpoint import checkpoint_step, complete_checkpoints

NDCG = "nDCG@10"
# The tables (<name>.csv, .md, .png) each job writes, and the columns the study report reads
CHECKPOINTS, RANK_SWEEP, ABLATION, DELTA_STATS = "checkpoints", "rank_sweep", "ablation", "delta_stats"
EFFECTIVE_RANK_FIGURE, SPECTRA_FIGURE = "effective_rank.png", "spectra.png"  # adapter_stats' other figures
KEPT_IN = "keep LoRA in"  # ablation: the variant
# ablation, beside "all" (every update kept): nDCG@10 as a share of all's and its paired bootstrap 95% interval over
# queries, the shape of 000's Table 4 comparisons (a layer range against all layers) and of its "98% recovery"
SHARE_OF_ALL, SHARE_LOW, SHARE_HIGH = "share of all", "share 95% low", "share 95% high"
PER_QUERY = "per_query"  # <name>.per_query.csv
# ablation_contrasts.csv (.md): study 000's claims as paired nDCG@10 differences (first minus second variant) over
# queries, each written when both its variants ran
CONTRASTS = "ablation_contrasts"
CONTRAST, DIFFERENCE, DIFFERENCE_LOW, DIFFERENCE_HIGH = "contrast", "difference", "95% low", "95% high"
MHA_OVER_MLP, UP_GATE_OVER_DOWN = "000 Table 3: MHA-only beats MLP-only", "000 Table 4: up and gate beat down"
STUDY_CONTRASTS = (
    (MHA_OVER_MLP, "attn-only", "mlp-only"),
    ("000 Table 3: both beat MHA-only", "all", "attn-only"),
    (UP_GATE_OVER_DOWN, "up+gate", "down"),
    ("000 Table 4: layers 5-15 beat the rest", "all@0.15625-0.5", "all@0.0-0.15625+0.5-1.0"),
)
QUERY = "qid"  # its query-id column, as in the rerank job's per_query.csv
MODULE, FROBENIUS, EFFECTIVE_RANK = "module", "frobenius", "effective_rank"  # delta_stats


PerQuery = dict[str, dict[str, float]]  # query id -> measure -> value


def _measure(reranker: Reranker, dataset: RerankDataset, dev: DevSettings) -> tuple[dict[str, float], PerQuery]:
    """(mean, per query) of the dev measures for the reranker as it is now."""
    return evaluate_run(dataset.qrels, rerank(reranker, dataset, dev.top_k).run, dev.measures)


def _reranker(loaded, head, meta, adapter: str | Path) -> Reranker:
    """The checkpoint's reranker, at its own max_length (what training's dev runs used; 512 for a foreign adapter)."""
    max_length = resolve_max_length(None, adapter, 512)
    return Reranker.build(loaded, meta["template"], head, max_length, ScoringOptions(), progress=False)


def _finish(out: str | Path, name: str, rows: list[dict], title: str, fig, config: dict, files=None,
            per_query: tuple[str, dict[object, PerQuery]] | None = None) -> list[dict]:
    """Write the table, its figure and manifest, and with `per_query` = (key column, {key: per-query values}) the
    per-query table beside them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, out / name, title, bold_best=NDCG if NDCG in rows[0] else None)
    if per_query is not None:
        key, values = per_query
        long = [{key: k, QUERY: qid, **measures}
                for k, by_query in values.items() for qid, measures in by_query.items()]
        if long:
            atomic_write_text(out / f"{name}.{PER_QUERY}.csv", to_csv(long))
    plots.save(fig, out / f"{name}.png")
    atomic_write_json(out / "manifest.json", build_manifest(config, files or {}))
    return rows


# -- 1. checkpoints ----------------------------------------------------------------------------

def checkpoint_steps(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint: a half-written one is never measured."""
    found = [(checkpoint_step(p), p) for p in complete_checkpoints(run_dir)]
    if not found:
        raise ConfigError(f"{run_dir}: no checkpoint-<step>/ folders; point at the --out of relscope train")
    return found


def convergence_step(steps: Sequence[int], values: Sequence[float], epsilon: float) -> int:
    """The first step whose value is within `epsilon` of the best."""
    best = max(values)
    return next(s for s, v in zip(steps, values) if v >= best - epsilon)


def evaluate_checkpoints(settings: CheckpointsSettings, out: str | Path, *, include_base: bool = True,
                         base: dict[str, float] | None = None) -> list[dict]:
    """Every checkpoint (and, for answer heads, the base model at step 0) on the dev run.

    Runtime extras, not settings: `include_base=False` leaves step 0 out (the rank sweep's tables); `base`: step 0's
    metrics when they were measured already on this very dev run (the study's zero-shot stage); they are then not
    measured again."""
    dev, epsilon = settings.dev, settings.epsilon
    run_dir, out = Path(settings.run_dir), Path(out)
    dataset = load_dev_run(dev)
    rows = [] if base is None else [{"step": 0, **{m: base[m] for m in dev.measures}}]
    per_query: dict[object, PerQuery] = {}
    checkpoints = checkpoint_steps(run_dir)
    loaded, head, meta = load_trained(checkpoints[0][1])  # the base loads once; later adapters load into it
    reranker = _reranker(loaded, head, meta, checkpoints[0][1])  # one run: one max_length for every checkpoint
    if base is None and include_base and meta["head"] != "linear":  # step 0: the untrained judge
        with loaded.model.disable_adapter():
            means, per_query[0] = _measure(reranker, dataset, dev)
        rows.append({"step": 0, **means})
    for step, folder in checkpoints:
        load_weights(loaded.model, head, folder)
        means, per_query[step] = _measure(reranker, dataset, dev)
        rows.append({"step": step, **means})
    steps = [r["step"] for r in rows]
    converged = convergence_step(steps, [r[NDCG] for r in rows], epsilon)
    for row in rows:
        row["converged"] = "yes" if row["step"] == converged else ""
    fig = plots.metric_curves(steps, {m: [r[m] for r in rows] for m in dev.measures},
                              f"{run_dir.name}: dev metrics by checkpoint", converged)
    return _finish(out, CHECKPOINTS, rows, f"{run_dir.name}: metrics by checkpoint (converged at step "
                   f"{converged}, epsilon {epsilon})", fig, {"run": str(run_dir), "dev": to_mapping(dev),
                                                            "epsilon": epsilon}, per_query=("step", per_query))


# -- 2. rank sweep -----------------------------------------------------------------------------

def sweep_rank(settings: SweepRankSettings, out: str | Path, progress: bool = True) -> list[dict]:
    """Train the config once per LoRA rank (resuming any finished or interrupted rank), then tabulate."""
    from relscope.training.job import run_train_job

    config, ranks, dev = settings.train_config(), settings.ranks, settings.dev
    out = Path(out)
    rows = []
    for rank in ranks:
        run_dir = out / f"rank-{rank}"
        lora = replace(config.lora, rank=rank, alpha=config.lora.alpha * rank / config.lora.rank)
        ranked = replace(config, lora=lora)
        # Never skipped on the folder alone: a finished run returns at once, but only after the train job has
        # checked its config.yaml, so a run another config left there is refused, not reported as this rank's.
        run_train_job(ranked, run_dir, progress=progress)
        table = evaluate_checkpoints(CheckpointsSettings(run_dir=str(run_dir), epsilon=settings.epsilon,
                                                         **dev_fields(dev)), run_dir / "anatomy", include_base=False)
        best = max(table, key=lambda r: r[NDCG])
        converged = next(r["step"] for r in table if r["converged"])
        rows.append({"rank": rank, "alpha": ranked.lora.alpha, NDCG: best[NDCG], "best step": best["step"],
                     "converged at": converged})
    fig = plots.metric_curves([r["rank"] for r in rows], {NDCG: [r[NDCG] for r in rows]}, "best nDCG@10 by LoRA rank")
    fig.axes[0].set_xscale("log", base=2)
    fig.axes[0].set_xlabel("LoRA rank")
    return _finish(out, RANK_SWEEP, rows, "LoRA rank sweep (alpha/rank fixed)", fig,
                   {"config": to_mapping(config), "ranks": list(ranks), "dev": to_mapping(dev)})


# -- 3. ablation -------------------------------------------------------------------------------

def parse_variant(text: str, n_layers: int) -> tuple[tuple[str, ...], set[int] | None]:
    """'<modules>[@<layers>]': a preset (none, mlp-only, attn-only, all, up+gate, down) or projections
    joined by '+', optionally restricted to layer ranges ('5-15', '0-4+16-31', '0.5-1.0')."""
    modules_text, _, layers_text = text.partition("@")
    if modules_text in MODULE_PRESETS:
        modules = MODULE_PRESETS[modules_text]
    else:
        modules = tuple(modules_text.split("+"))
        unknown = [m for m in modules if m not in PROJECTIONS]
        if unknown:
            raise ConfigError(f"variant {text!r}: unknown module {unknown[0]!r}; use a preset "
                              f"({', '.join(MODULE_PRESETS)}) or projections joined by '+'")
    return modules, parse_layers(layers_text, n_layers) if layers_text else None


def ablate(settings: AblateSettings, out: str | Path) -> list[dict]:
    """Metrics with the LoRA update kept only where each variant says (exact: the rest scaled to 0)."""
    adapter, variants, dev = settings.adapter, settings.variants, settings.dev
    loaded, head, meta = load_trained(adapter, model=settings.model, template=settings.template)
    base = loaded.model.get_base_model()
    n_layers = num_layers(base.config)
    parsed = [(v, *parse_variant(v, n_layers)) for v in variants]  # bad variants fail before any scoring
    sites = adapted_sites(base, loaded.spec)
    reranker = _reranker(loaded, head, meta, adapter)
    dataset = load_dev_run(dev)
    rows, per_query = [], {}
    for name, modules, layers in parsed:
        kept = select(sites, modules, layers) if modules else []
        with keep_only(base, kept):
            means, per_query[name] = _measure(reranker, dataset, dev)
        rows.append({KEPT_IN: name, "sites kept": f"{len(kept)}/{len(sites)}", **means})
    _check_same_queries(per_query)
    if "all" in per_query and NDCG in dev.measures:
        _add_share_of_all(rows, per_query)
    if NDCG in dev.measures:
        _write_contrasts(Path(out), per_query)
    fig = _bar(rows, KEPT_IN, f"{Path(adapter).name}: LoRA kept in")
    return _finish(out, ABLATION, rows, f"{adapter}: LoRA update kept only in", fig,
                   {"adapter": str(adapter), "variants": list(variants), "dev": to_mapping(dev)},
                   {"adapter": Path(adapter) / "adapter_model.safetensors"}, per_query=(KEPT_IN, per_query))


def _check_same_queries(per_query: dict[object, PerQuery]) -> None:
    """Every variant reranks the same dev run: a pairing over queries is only sound if each scored the same ones."""
    sets = {name: frozenset(values) for name, values in per_query.items()}
    if len(set(sets.values())) > 1:
        raise AssertionError(f"ablation variants scored different queries: { {k: len(v) for k, v in sets.items()} }")


def _add_share_of_all(rows: list[dict], per_query: dict[object, PerQuery]) -> None:
    """Each variant's nDCG@10 over all's (every update kept), with a paired bootstrap 95% interval over queries: how
    000's Table 4 sets a layer range against all layers."""
    every = per_query["all"]
    queries = sorted(every)
    for row in rows:
        ours = per_query[row[KEPT_IN]]
        full, kept = ([side[q][NDCG] for q in queries] for side in (every, ours))
        change, low, high = relative_drop_ci(full, kept, mean_of)
        row.update({SHARE_OF_ALL: 1.0 + change, SHARE_LOW: 1.0 + low, SHARE_HIGH: 1.0 + high})


def _write_contrasts(out: Path, per_query: dict[object, PerQuery]) -> None:
    """ablation_contrasts.csv: each of 000's claims whose two variants ran, as the paired nDCG@10 difference."""
    rows = []
    for claim, first, second in STUDY_CONTRASTS:
        if first in per_query and second in per_query:
            queries = sorted(per_query[first])
            difference, low, high = difference_ci([per_query[first][q][NDCG] for q in queries],
                                                  [per_query[second][q][NDCG] for q in queries])
            rows.append({CONTRAST: claim, "first": first, "second": second, DIFFERENCE: difference,
                         DIFFERENCE_LOW: low, DIFFERENCE_HIGH: high, "queries": len(queries)})
    if rows:
        out.mkdir(parents=True, exist_ok=True)
        write_table(rows, out / CONTRASTS, "Study 000's claims as paired nDCG@10 differences "
                    "(first minus second variant; 95% bootstrap interval over queries)")


def _bar(rows: list[dict], key: str, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(rows)), 3.6))
    ax.bar(range(len(rows)), [r[NDCG] for r in rows])
    ax.set_xticks(range(len(rows)), [r[key] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(NDCG)
    ax.set_title(title)
    fig.tight_layout()
    return fig


# -- 4. delta statistics -----------------------------------------------------------------------

def adapter_stats(settings: StatsSettings, out: str | Path) -> list[dict]:
    """||delta W||_F, singular values and effective rank of every adapted module."""
    adapter = settings.adapter
    loaded, _, _ = load_trained(adapter, model=settings.model)
    base = loaded.model.get_base_model()
    stats = delta_stats(base, adapted_sites(base, loaded.spec))
    rows = [{"layer": s.layer, MODULE: s.label, FROBENIUS: s.frobenius, EFFECTIVE_RANK: s.effective_rank,
             "top_singular_value": s.singular_values[0] if s.singular_values else 0.0} for s in stats]
    labels = list(dict.fromkeys(s.label for s in stats))
    n_layers = num_layers(base.config)
    grid = {key: np.full((n_layers, len(labels)), np.nan) for key in (FROBENIUS, EFFECTIVE_RANK)}
    for s in stats:
        grid[FROBENIUS][s.layer, labels.index(s.label)] = s.frobenius
        grid[EFFECTIVE_RANK][s.layer, labels.index(s.label)] = s.effective_rank
    out = Path(out)
    layer_names = [str(i) for i in range(n_layers)]
    plots.save(plots.heatmap(grid[EFFECTIVE_RANK], layer_names, labels, "effective rank of delta W",
                             "effective rank"), out / EFFECTIVE_RANK_FIGURE)
    plots.save(plots.spectra({f"{s.layer}.{s.label}": s.singular_values for s in stats[:: max(1, len(stats) // 12)]},
                             "singular values of delta W (a sample of modules)"), out / SPECTRA_FIGURE)
    fig = plots.heatmap(grid[FROBENIUS], layer_names, labels, "||delta W||_F by layer and module", "Frobenius norm")
    return _finish(out, DELTA_STATS, rows, f"{adapter}: LoRA update by layer and module", fig,
                   {"adapter": str(adapter)}, {"adapter": Path(adapter) / "adapter_model.safetensors"})
