"""The settings of the evaluation commands (rerank, evaluate, fuse): one frozen dataclass per job.

Each field's type, default and help text live here once; `relscope.cli` derives the flags from them, the study
builds them by keyword. No torch here: `relscope <command> --help` reads this module.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from relscope.config import check_device_name, check_dtype_name, option
from relscope.errors import ConfigError
from relscope.measures import DEFAULT_MEASURES, check_measures

NORMS = ("zscore", "minmax", "rrf")
MEASURES_HELP = "ir_measures strings"


@dataclass(frozen=True)
class RerankConfig:
    """`relscope rerank`: score a first-stage run's top-k with an LLM and evaluate it."""

    model: str = field(default="smollm2-135m-instruct", metadata=option(
        "HF id, local folder, .gguf file or packaged alias"))
    data: str | None = field(default=None, metadata=option(
        "TREC folder with queries.tsv, collection.tsv, qrels.txt, run.bm25.txt (unset: $RELSCOPE_DATA/trec-dl-2019)"))
    queries: str | None = field(default=None, metadata=option("explicit queries file (overrides the folder's)"))
    collection: str | None = field(default=None, metadata=option("explicit collection file (overrides the folder's)"))
    qrels: str | None = field(default=None, metadata=option("explicit qrels file (overrides the folder's)"))
    run: str | None = field(default=None, metadata=option("explicit first-stage run file (overrides the folder's)"))
    rankllm: str | None = field(default=None, metadata=option(
        "a rank_llm request json (queries, candidates and their text) instead"))
    adapter: str | None = field(default=None, metadata=option(
        "a checkpoint-<step>/ folder of relscope train (uses its model, template, head)"))
    top_k: int = field(default=100, metadata=option("rerank this many first-stage passages per query"))
    max_queries: int | None = field(default=None, metadata=option("the run's first n queries only (unset: all)"))
    template: str | None = field(default=None, metadata=option(
        "prompt template: yes_no, score, pairwise or a published reranker's (unset: the adapter's, the model's "
        "preset, else yes_no)"))
    head: str | None = field(default=None, metadata=option(
        "scoring head: yes_no, first_answer, linear, ab (unset: the adapter's or the model's preset, else the "
        "template's)"))
    max_length: int | None = field(default=None, metadata=option(
        "prompt tokens; passages are truncated to fit (unset: the adapter's, what it was trained with; the model's "
        "preset's; else 512)"))
    max_batch_tokens: int = field(default=0, metadata=option(
        "padded tokens per forward; 0: by device (1024 on CPU, 16384 on CUDA)"))
    prefix_cache: bool = field(default=True, metadata=option(
        "reuse the KV cache of each query's shared prompt prefix (--no-prefix-cache: do not)"))
    on_missing: Literal["error", "skip"] = field(default="error", metadata=option(
        "a run passage without text: fail or skip"))
    measures: tuple[str, ...] = field(default=DEFAULT_MEASURES, metadata=option(MEASURES_HELP))
    dtype: str = field(default="auto", metadata=option(
        "auto, float32, bfloat16, float16 (auto: bf16 where the hardware has it natively)"))
    device: str | None = field(default=None, metadata=option("cpu, cuda, cuda:1 ... (unset: cuda when available)"))

    def __post_init__(self) -> None:
        for key in ("top_k", "max_length", "max_queries"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.max_batch_tokens < 0:
            raise ValueError(f"max_batch_tokens must be 0 (by device) or positive, got {self.max_batch_tokens}")
        check_device_name(self.device)
        check_dtype_name(self.dtype)
        check_measures(self.measures, "measures")


def check_fusion(n_runs: int, weights: Sequence[float], norm: str) -> None:
    """Refuse a fusion request before any run is read: one finite weight >= 0 per run (not all 0), a known norm."""
    if n_runs != len(weights) or n_runs < 2:
        raise ConfigError(f"fusion needs two or more runs and one weight each; got {n_runs} runs, "
                          f"{len(weights)} weights; e.g. --run a.trec --run b.trec --weights 0.7 0.3")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) \
                or weight < 0:
            raise ConfigError(f"fusion weights: {weight!r} is not a finite number >= 0; e.g. --weights 0.7 0.3")
    if not any(weights):
        raise ConfigError("fusion weights are all 0, which ranks nothing; give at least one positive --weights value")
    if norm not in NORMS:
        raise ConfigError(f"fusion norm {str(norm)[:40]!r} is unknown; choose one of {', '.join(NORMS)}")


@dataclass(frozen=True)
class EvaluateSettings:
    """`relscope evaluate`: a TREC run scored against judgments with ir_measures."""

    qrels: str = field(metadata=option("TREC qrels file"))
    run: str = field(metadata=option("TREC run file"))
    measures: tuple[str, ...] = field(default=DEFAULT_MEASURES, metadata=option(MEASURES_HELP))
    per_query: bool = field(default=False, metadata=option("also print one line per query"))

    def __post_init__(self) -> None:
        check_measures(self.measures, "--measures")  # before reading: a bad measure must not wait for a big run


@dataclass(frozen=True)
class FuseSettings:
    """`relscope fuse`: runs interpolated per query (a reranker with its first stage), each evaluated."""

    runs: tuple[str, ...] = field(metadata=option("a TREC run; repeat (the first gives the queries and the order)",
                                                  flag="--run", repeat=True))
    weights: tuple[float, ...] = field(metadata=option("one fixed weight per run"))
    norm: str = field(default="zscore", metadata=option("per-query score normalisation: " + ", ".join(NORMS)))
    qrels: str | None = field(default=None, metadata=option("evaluate each input run and the fused one"))
    measures: tuple[str, ...] = field(default=DEFAULT_MEASURES, metadata=option(MEASURES_HELP))

    def __post_init__(self) -> None:
        check_fusion(len(self.runs), self.weights, self.norm)
        check_measures(self.measures, "--measures")


@dataclass(frozen=True)
class ExportSettings:
    """`relscope export`: a trained checkpoint as a merged Hugging Face model folder a serving library loads."""

    checkpoint: str = field(metadata=option("a checkpoint-<step>/ folder of relscope train (or a PEFT adapter)",
                                           positional=True))
    model: str | None = field(default=None, metadata=option(
        "the base model (unset: the one the checkpoint names)"))
    cross_encoder: bool = field(default=True, metadata=option(
        "also make the folder loadable as a sentence-transformers CrossEncoder where the installed version can "
        "(--no-cross-encoder: do not)"))

    def __post_init__(self) -> None:
        if not str(self.checkpoint).strip():
            raise ConfigError("export: give the checkpoint folder to export, e.g. runs/train/checkpoint-680")
