"""`relscope rerank` as a function: load, rerank, evaluate, write every output atomically."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from relscope.config import dump_yaml, to_mapping
from relscope.data.dataset import (
    DL19,
    RerankDataset,
    data_path,
    load_rankllm_dataset,
    load_rerank_dataset,
    resolve_files,
)
from relscope.data.trec import write_run
from relscope.data.types import natural_key
from relscope.errors import ConfigError
from relscope.evaluation.metrics import check_evaluable, evaluate_run, paired_difference
from relscope.evaluation.rerank import Reranker, rerank
from relscope.evaluation.settings import RerankConfig
from relscope.io import atomic_write_json, atomic_write_text, output_lock
from relscope.manifest import CONFIG_FILE, MANIFEST_FILE, build_manifest
from relscope.models.adapters import (
    adapter_folder,
    adapter_weights,
    load_preset_adapter,
    load_trained,
    resolve_max_length,
)
from relscope.models.load import load_model
from relscope.models.scoring import ScoringOptions
from relscope.prompts.presets import RerankerPreset, preset_for

log = logging.getLogger(__name__)

# What `relscope rerank` writes (the study and its report read them back by these names).
RUN_FILE, METRICS_FILE, PER_QUERY_FILE = "run.trec", "metrics.json", "per_query.csv"


def dataset_files(config: RerankConfig) -> dict[str, Path]:
    """The input files a rerank reads: those named, the rest from the data folder (TREC DL 2019 by default)."""
    explicit = {k: getattr(config, k) for k in ("queries", "collection", "qrels", "run")}
    folder = config.data
    if folder is None and not all(explicit[k] for k in ("queries", "collection", "run")):
        folder = str(data_path(DL19))
    return resolve_files(data_path(folder) if folder else None,
                         **{k: data_path(v) if v else None for k, v in explicit.items()})


def load_dataset(config: RerankConfig) -> RerankDataset:
    """The queries, run, passages (and qrels) to rerank, read and checked before any model is loaded."""
    if config.rankllm:
        dataset = load_rankllm_dataset(Path(config.rankllm), config.top_k, Path(config.qrels) if config.qrels else None)
    else:
        dataset = load_rerank_dataset(dataset_files(config), config.top_k, config.on_missing)
    return dataset.first_queries(config.max_queries)


def run_rerank_job(config: RerankConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Writes config.yaml, run.trec, metrics.json, per_query.csv and manifest.json to out_dir."""
    with output_lock(out_dir):  # two jobs on one folder would leave a mix of both outputs
        return _rerank_job(config, Path(out_dir), progress)


def _rerank_job(config: RerankConfig, out: Path, progress: bool) -> dict[str, Any]:
    # An adapter is scored with the max_length it was trained with unless one is given (a published reranker: its
    # preset's); config.yaml says which.
    config = replace(config, max_length=resolve_max_length(config.max_length, config.adapter,
                                                           default_max_length(config)))
    dataset = load_dataset(config)  # fail on bad data before loading a model
    check_dataset_evaluable(dataset)
    files = dict(dataset.files)
    options = ScoringOptions(max_batch_tokens=config.max_batch_tokens, prefix_cache=config.prefix_cache)
    reranker = build_reranker(config, options, progress)
    loaded = reranker.loaded
    result = rerank(reranker, dataset, config.top_k)

    preset = chosen_preset(config)
    metrics = {
        "model": loaded.name,
        "adapter": config.adapter,
        "preset": preset.name if preset else None,
        "template": reranker.builder.template.name,
        "max_length": reranker.builder.max_length,
        "top_k": config.top_k,
        "queries": len(dataset.run),
        "passages_scored": result.scored,
        "prompts_scored": result.prompts,
        "passages_missing_text": len(dataset.missing),
        "prompts_truncated": result.truncated,
        "seconds": round(result.seconds, 3),
        "passages_per_second": round(result.scored / result.seconds, 2) if result.seconds else None,
        "tokens_per_second": round(result.tokens / result.seconds, 1) if result.seconds else None,
    }
    per_query = {}
    if dataset.qrels is not None:
        first_mean, first_per_query = evaluate_run(dataset.qrels, dataset.run, config.measures)
        mean, per_query = evaluate_run(dataset.qrels, result.run, config.measures)
        metrics["first_stage"], metrics["reranked"] = first_mean, mean
        metrics["reranked_minus_first_stage"] = {  # paired bootstrap over queries: is the gain more than noise?
            m: paired_difference({q: v[m] for q, v in per_query.items()},
                                 {q: v[m] for q, v in first_per_query.items()}) for m in mean}
        per_query = {"first_stage": first_per_query, "reranked": per_query}

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, dump_yaml(config))
    write_run(result.run, out / RUN_FILE, tag=f"relscope-{reranker.builder.template.name}")
    atomic_write_json(out / METRICS_FILE, metrics)
    if per_query:
        atomic_write_text(out / PER_QUERY_FILE, per_query_csv(per_query, config.measures))
    adapter = config.adapter or (adapter_folder(config.model) if preset and preset.base_model else None)
    if adapter:  # hashed in the manifest: the run is identified by the adapter's bytes
        files["adapter"] = adapter_weights(Path(adapter))
    manifest = build_manifest(
        to_mapping(config), files, template_hash=reranker.builder.template.fingerprint(),
        model_source=loaded.source, missing_passages=[list(m) for m in dataset.missing[:100]],
    )
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return metrics


def check_dataset_evaluable(dataset: RerankDataset) -> None:
    """Judgments ir_measures can take, sharing a query with the run (after --max-queries), before a model loads."""
    if dataset.qrels is not None:
        run_source = dataset.files.get("run") or dataset.files.get("rankllm") or "the run"
        check_evaluable(dataset.qrels, dataset.run, (str(dataset.files.get("qrels", "qrels")), str(run_source)))


def chosen_preset(config: RerankConfig) -> RerankerPreset | None:
    """The published reranker's preset that scores `config.model`: none for a relscope checkpoint, or when the user
    chose the template (their choice overrides the preset's prompt and head)."""
    return None if config.adapter or config.template else preset_for(config.model)


def default_max_length(config: RerankConfig) -> int:
    """The prompt length when neither the user nor a checkpoint gives one: the preset's, else 512."""
    preset = chosen_preset(config)
    return preset.max_length if preset else 512


def build_reranker(config: RerankConfig, options: ScoringOptions, progress: bool) -> Reranker:
    """The base model zero-shot (a published reranker with its preset's prompt and head), a preset's adapter on its
    base (RankLLaMA), or a trained checkpoint with its own template, head and max_length."""
    max_length = resolve_max_length(config.max_length, config.adapter, default_max_length(config))
    preset = chosen_preset(config)
    if preset is not None:
        log.info("model %s: scored as the %s preset (%s)", config.model, preset.name, preset.source)
    if preset is not None and preset.base_model:  # the id names a PEFT adapter with a trained head
        loaded, head, _ = load_preset_adapter(config.model, preset, config.dtype, config.device, merge=True,
                                              head=config.head)
        return Reranker.build(loaded, preset.template, head, max_length, options, progress)
    if config.adapter is None:
        loaded = load_model(config.model, dtype=config.dtype, device=config.device)
        template = config.template or (preset.template if preset else "yes_no")
        head = config.head or (preset.head if preset else None)
        return Reranker.build(loaded, template, head, max_length, options, progress)

    loaded, head, meta = load_trained(config.adapter, dtype=config.dtype, device=config.device, merge=True)
    template = config.template or meta["template"]
    if config.head is not None or template != meta["template"]:
        raise ConfigError(f"adapter {config.adapter} was trained with template {meta['template']!r} and head "
                          f"{meta['head']!r}; leave template and head unset to use them")
    return Reranker.build(loaded, template, head, max_length, options, progress)


def per_query_csv(per_query: dict[str, dict[str, dict[str, float]]], measures: Sequence[str]) -> str:
    """One row per query: each measure for the first stage and the reranked run."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    runs = list(per_query)
    writer.writerow(["qid"] + [f"{run}:{m}" for run in runs for m in measures])
    qids = sorted(set().union(*(per_query[r] for r in runs)), key=natural_key)
    for qid in qids:
        writer.writerow([qid] + [_fmt(per_query[r].get(qid, {}).get(m)) for r in runs for m in measures])
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
