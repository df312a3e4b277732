"""The study's stages, in order: each runs existing relscope jobs into its own subfolder.

A stage is a name, the stages whose outputs it reads, the slice of the config it depends on (its
key: a stage is redone when this slice or an upstream key changes, or when a stage it reads has run
again since; see runner.py) and a function that runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from relscope.config import RerankConfig, to_mapping
from relscope.study.config import StudyConfig


@dataclass(frozen=True)
class StudyContext:
    config: StudyConfig
    root: Path
    progress: bool = True

    def folder(self, stage: str) -> Path:
        return self.root / stage

    @property
    def train_dir(self) -> Path:
        return self.folder("train")

    def last_checkpoint(self) -> str:
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
                   ctx.folder("zero-shot"), ctx.progress)  # the checkpoints' prompt length: step 0 is scored alike


def _train(ctx: StudyContext) -> None:
    from relscope.training.job import run_train_job

    run_train_job(ctx.config.train, ctx.train_dir, resume=True, progress=ctx.progress)


def _checkpoints(ctx: StudyContext) -> None:
    from relscope.analysis.anatomy import evaluate_checkpoints

    # Step 0 is the zero-shot stage's judge on the same dev run: measured once, and in the table and figure.
    # (A dev run without qrels has no "reranked" metrics; evaluate_checkpoints then names the missing file.)
    base = zero_shot_metrics(ctx.folder("zero-shot") / "metrics.json", ctx.config.dev.measures)
    evaluate_checkpoints(ctx.train_dir, ctx.folder("checkpoints"), ctx.config.dev, base=base)


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

    c, adapter, out = ctx.config, ctx.last_checkpoint(), ctx.folder("ablations")
    adapter_stats(adapter, out / "stats")
    ablate(adapter, out / "keep", c.ablation.variants, replace(c.dev, max_queries=c.ablation.max_queries))


def _representations(ctx: StudyContext) -> None:
    from relscope.analysis.attention import attention_job
    from relscope.analysis.dynamics import analyse_dynamics
    from relscope.analysis.probe import probe_job

    c, r, out, adapter = ctx.config, ctx.config.representations, ctx.folder("representations"), ctx.last_checkpoint()
    analyse_dynamics(ctx.train_dir, out / "dynamics", r.window)
    length = r.max_length or c.train.max_length
    attention_job(out / "attention", r.groups, c.model, adapter, None, None, r.attention_groups, length)
    probe_job(out / "probe", r.groups, c.model, adapter, None, r.probe_groups, "hard", None, r.folds, length)


def _patch_settings(ctx: StudyContext, adapter: str | None, max_pairs: int):
    from relscope.analysis.patching.job import PatchSettings

    m = ctx.config.mechanisms
    return PatchSettings(m.groups, ctx.config.model, adapter, None, max_pairs, "hard", min_gap=m.min_gap,
                         max_length=m.max_length or ctx.config.train.max_length, heads=True,
                         head_positions=m.head_positions)  # one prompt length for base and fine-tuned


def _patching(ctx: StudyContext) -> None:
    from relscope.analysis.compare import compare_job
    from relscope.analysis.patching.job import patch_job

    out, m = ctx.folder("patching"), ctx.config.mechanisms
    patch_job(out / "fine-tuned", _patch_settings(ctx, ctx.last_checkpoint(), m.max_pairs), ctx.progress)
    patch_job(out / "base", _patch_settings(ctx, None, m.max_pairs), ctx.progress)
    compare_job(str(out / "base"), str(out / "fine-tuned"), out / "base-vs-fine-tuned")
    compare_job(str(out / "base"), str(out / "fine-tuned"), out / "base-vs-fine-tuned-heads", heads=True)


def _heads(ctx: StudyContext) -> None:
    from relscope.analysis.heads import heads_job
    from relscope.analysis.knockout import knockout_job

    c, m, out = ctx.config, ctx.config.mechanisms, ctx.folder("heads")
    adapter, ie_heads = ctx.last_checkpoint(), str(ctx.folder("patching") / "fine-tuned" / "ie_heads.npz")
    heads_job(out / "heads", _patch_settings(ctx, adapter, m.heads_pairs), ie_heads, progress=ctx.progress)
    dev = replace(c.dev, max_queries=m.knockout_queries)
    knockout_job(out / "knockout", _patch_settings(ctx, adapter, m.knockout_groups), ie_heads, m.knockout_size,
                 random_draws=m.random_draws, max_groups=m.knockout_groups, dev=dev, progress=ctx.progress)


def _report(ctx: StudyContext) -> None:
    from relscope.study.report import write_report

    write_report(ctx.root, ctx.config)


STAGES: tuple[Stage, ...] = (
    Stage("zero-shot", "zero-shot baseline", (), lambda c: (c.model, to_mapping(c.dev), c.train.objective,
                                                            c.train.template, c.train.max_length), _zero_shot),
    Stage("train", "LoRA training", (), lambda c: to_mapping(c.train), _train),
    Stage("checkpoints", "checkpoint table", ("zero-shot", "train"), lambda c: to_mapping(c.dev), _checkpoints),
    Stage("ablations", "LoRA ablations", ("train",), lambda c: (to_mapping(c.dev), to_mapping(c.ablation)),
          _ablations),
    Stage("representations", "dynamics, attention, probes", ("train",), lambda c: to_mapping(c.representations),
          _representations),
    Stage("patching", "activation patching", ("train",), lambda c: to_mapping(c.mechanisms), _patching),
    Stage("heads", "heads and knockouts", ("train", "patching"), lambda c: (to_mapping(c.dev),
                                                                            to_mapping(c.mechanisms)), _heads),
    Stage("report", "report", ("zero-shot", "train", "checkpoints", "ablations", "representations", "patching",
                               "heads"), lambda c: (c.name, c.budget_minutes), _report),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
