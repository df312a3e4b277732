"""`relscope train` configuration: one frozen dataclass per concern, loaded strictly from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from relscope.config import DEFAULT_MEASURES


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    # Family-independent names: q k v o gate up down, or the groups attn, mlp, all.
    targets: tuple[str, ...] = ("all",)
    # Layer indices that get LoRA (None: all); negative indices count from the end.
    layers: tuple[int, ...] | None = None
    # Layers whose LoRA weights stay at their initial value (B = 0, so no update):
    # the groups early / middle / late (thirds of the stack) or layer indices as strings.
    freeze: tuple[str, ...] = ()
    quantize_4bit: bool = False  # QLoRA: needs CUDA and bitsandbytes

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        known = ("q", "k", "v", "o", "gate", "up", "down", "attn", "mlp", "all")
        unknown = [t for t in self.targets if t not in known]
        if not self.targets or unknown:
            problem = f"unknown target module {unknown[0]!r}" if unknown else "targets is empty"
            raise ValueError(f"targets: {problem}; use {', '.join(known[:7])} or the groups attn, mlp, all")


@dataclass(frozen=True)
class DevSettings:
    """A development run reranked at every checkpoint (e.g. DL19 BM25 top-20)."""

    data: str  # a TREC folder with queries.tsv, collection.tsv, qrels.txt, run.bm25.txt
    top_k: int = 20
    max_queries: int | None = None  # the first n queries only, for a quicker signal
    measures: tuple[str, ...] = DEFAULT_MEASURES

    def __post_init__(self) -> None:
        if self.top_k <= 0:
            raise ValueError(f"dev.top_k must be a positive integer, got {self.top_k}")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "smollm2-135m-instruct"
    # Training data: Tevatron group .jsonl files and/or TREC folders (groups are built from their judgments).
    train: tuple[str, ...] = ()
    objective: str = "yes_no"  # listwise | yes_no | pairwise (relscope.training.objectives)
    template: str | None = None  # default: the objective's
    head: str | None = None  # default: the template's (linear for score, yes_no, ab)
    negatives: int = 3  # negatives per group in each step (sampled from the group's negatives)
    hard_fraction: float = 1.0  # when building groups from TREC folders
    min_grade: int = 2
    max_length: int = 256
    lora: LoraSettings = field(default_factory=LoraSettings)
    # Optimisation: a step is batch_size groups per process x grad_accum micro-batches.
    max_steps: int = 300
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    scheduler: str = "linear"
    save_steps: int = 50
    save_total_limit: int | None = None
    logging_steps: int = 1
    seed: int = 42
    bf16: Literal["auto", "yes", "no"] = "auto"  # auto: bf16 on CUDA when supported; "yes" autocasts on CPU too
    gradient_checkpointing: bool = False  # recompute activations in backward: 7-8B models on one GPU
    dtype: str = "auto"
    device: str | None = None
    # Bit-identical reruns on GPU too (deterministic cuBLAS/cuDNN kernels, slower); CPU runs are deterministic anyway.
    deterministic: bool = False
    dev: DevSettings | None = None
    report_to: tuple[str, ...] = ("tensorboard",)

    def __post_init__(self) -> None:
        for key in ("negatives", "max_length", "max_steps", "batch_size", "grad_accum", "save_steps", "logging_steps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not self.train:
            raise ValueError("train is empty; give Tevatron .jsonl files or TREC folders with qrels")
