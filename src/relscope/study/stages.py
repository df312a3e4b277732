"""The study's stages, in order: each runs existing relscope jobs into its own subfolder.

A stage is a name, the stages whose outputs it reads, the slice of the config it depends on (its
key: a stage is redone when this slice or an upstream key changes, or when a stage it reads has run
again since; see runner.py) and a function that runs it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relscope.config import to_mapping
from relscope.evaluation.settings import RerankConfig
from relscope.study import layout
from relscope.study.config import StudyConfig


@dataclass(frozen=True)
class StudyContext:
    config: StudyConfig
    root: Path
    progress: bool = True

    def folder(self, stage: str) -> Path:
        """Where `stage` writes its outputs: its own subfolder of the study's."""
        return self.root / stage

    @property
    def train_dir(self) -> Path:
        """The train stage's folder, which the later stages read the fine-tuned run from."""
        return self.folder(layout.TRAIN)

    def last_checkpoint(self) -> str:
        """The train stage's last complete checkpoint, the adapter the analyses load; a ConfigError when none."""
        from relscope.errors import ConfigError
        from relscope.training.checkpoint import latest_checkpoint

        found = latest_checkpoint(self.train_dir)
        if found is None:
            raise ConfigError(f"{self.train_dir}: no complete checkpoint; run the train stage (--force train)")
        return str(found)


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    needs: tuple[str, ...]
    settings: Callable[[StudyConfig], Any]  # what the outputs depend on
    run: Callable[[StudyContext], None]


def _zero_shot(ctx: StudyContext) -> None:
    from relscope.evaluation.job import run_rerank_job

    c = ctx.config
    # Before training a linear score head is random: the zero-shot judge answers yes/no (or A/B when pairwise).
    template = "pairwise" if c.train.objective == "pairwise" else "yes_no"
    run_rerank_job(RerankConfig(model=c.model, data=c.dev.data, top_k=c.dev.top_k, max_queries=c.dev.max_queries,
                                template=template, measures=c.dev.measures, max_length=c.train.max_length),
                   ctx.folder(layout.ZERO_SHOT), ctx.progress)  # the checkpoints' prompt length: step 0 is scored alike


def _train(ctx: StudyContext) -> None:
    from relscope.training.job import run_train_job

    run_train_job(ctx.config.train, ctx.train_dir, resume=True, progress=ctx.progress)


def _checkpoints(ctx: StudyContext) -> None:
    from relscope.analysis.anatomy import evaluate_checkpoints
    from relscope.analysis.settings import CheckpointsSettings, dev_fields
    from relscope.evaluation.job import METRICS_FILE

    # Step 0 is the zero-shot stage's judge on the same dev run: measured once, and in the table and figure.
    # (A dev run without qrels has no "reranked" metrics; evaluate_checkpoints then names the missing file.)
    base = zero_shot_metrics(ctx.folder(layout.ZERO_SHOT) / METRICS_FILE, ctx.config.dev.measures)
    settings = CheckpointsSettings(run_dir=str(ctx.train_dir), **dev_fields(ctx.config.dev))
    evaluate_checkpoints(settings, ctx.folder(layout.CHECKPOINTS), base=base)


def zero_shot_metrics(path: Path, measures: tuple[str, ...]) -> dict[str, float] | None:
    """The zero-shot stage's reranked metrics (None without qrels); one DataError naming the file when it is
    missing, damaged, or edited into other types or other measures."""
    import json
    import math

    from relscope.errors import DataError

    fix = "rerun that stage with --force zero-shot"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise DataError(f"{path}: cannot be read ({type(err).__name__}); {fix}") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: not a mapping of metrics; {fix}")
    reranked = metrics.get("reranked")
    if reranked is None:
        return None
    if not isinstance(reranked, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in reranked.values()):
        raise DataError(f"{path}: 'reranked' is not a mapping of measure names to numbers; {fix}")
    missing = [m for m in measures if m not in reranked]
    if missing:
        raise DataError(f"{path}: has no {missing[0]!r} (dev.measures); {fix}")
    return reranked


def _ablations(ctx: StudyContext) -> None:
    from relscope.analysis.anatomy import ablate, adapter_stats
    from relscope.analysis.settings import AblateSettings, StatsSettings, dev_fields

    c, adapter, out = ctx.config, ctx.last_checkpoint(), ctx.folder(layout.ABLATIONS)
    adapter_stats(StatsSettings(adapter=adapter), out / layout.STATS)
    dev = {**dev_fields(c.dev), "max_queries": c.ablation.max_queries}  # each variant is one rerank
    ablate(AblateSettings(adapter=adapter, variants=c.ablation.variants, **dev), out / layout.KEEP)


def _representations(ctx: StudyContext) -> None:
    from relscope.analysis.attention import attention_job
    from relscope.analysis.dynamics import analyse_dynamics
    from relscope.analysis.probe import probe_job
    from relscope.analysis.settings import AttentionSettings, DynamicsSettings, ProbeSettings

    c, r, adapter = ctx.config, ctx.config.representations, ctx.last_checkpoint()
    out = ctx.folder(layout.REPRESENTATIONS)
    analyse_dynamics(DynamicsSettings(run_dir=str(ctx.train_dir), window=r.window), out / layout.DYNAMICS)
    length = r.max_length or c.train.max_length  # one prompt length for base and fine-tuned
    attention_job(AttentionSettings(model=c.model, adapter=adapter, groups=r.groups, max_groups=r.attention_groups,
                                    max_length=length), out / layout.ATTENTION)
    probe_job(ProbeSettings(model=c.model, adapter=adapter, groups=r.groups, max_groups=r.probe_groups,
                            max_length=length, folds=r.folds), out / layout.PROBE)


def _patch_settings(ctx: StudyContext, adapter: str | None):
    """The study's patch run of the fine-tuned (`adapter`) or the base model (None)."""
    from relscope.analysis.patching.settings import PatchSettings

    m = ctx.config.mechanisms
    validated = m.attribution if adapter is not None else None  # the estimator checked on the fine-tuned model
    return PatchSettings(groups=m.groups, model=ctx.config.model, adapter=adapter, max_pairs=m.max_pairs,
                         negative_kind="hard", min_gap=m.min_gap, heads=True, head_positions=m.head_positions,
                         max_length=m.max_length or ctx.config.train.max_length,  # one length for base and tuned
                         attribution=validated, validate=validated is not None)


def _circuit(ctx: StudyContext, out: Path) -> None:
    """The fine-tuned model's edge attribution and the faithfulness of its top-edge circuits."""
    from relscope.analysis.patching.circuit import circuit_job
    from relscope.analysis.patching.settings import CircuitSettings

    patch = _patch_settings(ctx, ctx.last_checkpoint())
    circuit_job(CircuitSettings(groups=patch.groups, model=patch.model, adapter=patch.adapter,
                                max_pairs=patch.max_pairs, min_gap=patch.min_gap, max_length=patch.max_length), out,
                ctx.progress)


def _patching(ctx: StudyContext) -> None:
    from relscope.analysis.compare import compare_job
    from relscope.analysis.patching.job import patch_job
    from relscope.analysis.settings import CompareSettings

    out = ctx.folder(layout.PATCHING)
    patch_job(_patch_settings(ctx, ctx.last_checkpoint()), out / layout.TUNED, ctx.progress)
    patch_job(_patch_settings(ctx, None), out / layout.BASE, ctx.progress)
    if ctx.config.mechanisms.circuit:
        _circuit(ctx, out / layout.CIRCUIT)
    elif (out / layout.CIRCUIT).is_dir():  # left by an interrupted run with the circuit on: not this run's
        shutil.rmtree(out / layout.CIRCUIT)
    runs = {"run_a": str(out / layout.BASE), "run_b": str(out / layout.TUNED)}
    compare_job(CompareSettings(**runs), out / layout.BASE_VS_TUNED)
    compare_job(CompareSettings(**runs, heads=True), out / layout.BASE_VS_TUNED_HEADS)


def _heads(ctx: StudyContext) -> None:
    from relscope.analysis.heads import heads_job
    from relscope.analysis.knockout import knockout_job
    from relscope.analysis.patching.artefacts import IE_HEADS_FILE
    from relscope.analysis.patching.settings import HeadsSettings, KnockoutSettings
    from relscope.analysis.settings import dev_fields

    c, m, out = ctx.config, ctx.config.mechanisms, ctx.folder(layout.HEADS)
    model = {"groups": m.groups, "model": c.model, "adapter": ctx.last_checkpoint(), "negative_kind": "hard",
             "max_length": m.max_length or c.train.max_length,
             "ie_heads": str(ctx.folder(layout.PATCHING) / layout.TUNED / IE_HEADS_FILE)}
    heads_job(HeadsSettings(**model, max_pairs=m.heads_pairs), out / layout.HEAD_ANALYSIS, ctx.progress)
    dev = {**dev_fields(c.dev), "max_queries": m.knockout_queries}  # dev queries reranked under each knockout
    knockout_job(KnockoutSettings(**model, **dev, size=m.knockout_size, random_draws=m.random_draws,
                                  max_groups=m.knockout_groups), out / layout.KNOCKOUT, ctx.progress)


def _report(ctx: StudyContext) -> None:
    from relscope.study.report import write_report

    write_report(ctx.root, ctx.config)


STAGES: tuple[Stage, ...] = (
    Stage(layout.ZERO_SHOT, "zero-shot baseline", (), lambda c: (c.model, to_mapping(c.dev), c.train.objective,
                                                                 c.train.template, c.train.max_length), _zero_shot),
    Stage(layout.TRAIN, "LoRA training", (), lambda c: to_mapping(c.train), _train),
    Stage(layout.CHECKPOINTS, "checkpoint table", (layout.ZERO_SHOT, layout.TRAIN), lambda c: to_mapping(c.dev),
          _checkpoints),
    Stage(layout.ABLATIONS, "LoRA ablations", (layout.TRAIN,), lambda c: (to_mapping(c.dev), to_mapping(c.ablation)),
          _ablations),
    Stage(layout.REPRESENTATIONS, "dynamics, attention, probes", (layout.TRAIN,),
          lambda c: to_mapping(c.representations), _representations),
    Stage(layout.PATCHING, "activation patching", (layout.TRAIN,), lambda c: to_mapping(c.mechanisms), _patching),
    Stage(layout.HEADS, "heads and knockouts", (layout.TRAIN, layout.PATCHING),
          lambda c: (to_mapping(c.dev), to_mapping(c.mechanisms)), _heads),
    Stage(layout.REPORT, "report", (layout.ZERO_SHOT, layout.TRAIN, layout.CHECKPOINTS, layout.ABLATIONS,
                                    layout.REPRESENTATIONS, layout.PATCHING, layout.HEADS),
          lambda c: (c.name, c.budget_minutes), _report),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
