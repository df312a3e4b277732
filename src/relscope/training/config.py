"""`relscope train` configuration: one frozen dataclass per concern, loaded strictly from YAML.

Every value is range-checked where it enters (`__post_init__`, naming the key); `TrainConfig.check_paths()` checks
that the data it names can be read, for callers (the study) that must fail before any work starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from relscope.config import check_device_name, check_dtype_name, from_mapping, load_yaml, set_dotted
from relscope.data.dev import DevSettings
from relscope.errors import ConfigError, DataError, is_finite_number
from relscope.models.lora import LoraSettings

# Hugging Face SchedulerType values that run without extra arguments: the rest need lr_scheduler_kwargs
# (cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay) or an evaluation metric each step
# (reduce_lr_on_plateau, greedy), which a relscope training run has not got.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")
REPORTERS = ("tensorboard",)
MAX_SEED = 2**32 - 1  # numpy's seed range, which transformers.set_seed uses


@dataclass(frozen=True)
class TrainConfig:
    model: str = "smollm2-135m-instruct"
    # Training data: Tevatron group .jsonl files and/or TREC folders (groups are built from their judgments).
    train: tuple[str, ...] = ()
    objective: str = "yes_no"  # listwise | graded_listwise | yes_no | pairwise (relscope.training.objectives)
    template: str | None = None  # default: the objective's
    head: str | None = None  # default: the template's (linear for score, yes_no, ab)
    negatives: int = 3  # negatives per group in each step (drawn anew each epoch from all of the group's negatives)
    # Share of hard negatives in each draw (the rest random ones), and what groups built from TREC folders need.
    hard_fraction: float = 1.0
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
    # Checkpoints at exactly these steps instead of every save_steps (and at max_steps), e.g. [5, 10, 100, 300]: the
    # steps of study 000's Table 1.
    save_at: tuple[int, ...] | None = None
    # Held-out evaluation, as study 001's eval accuracy: the groups of this many queries' worth (at least) are kept out
    # of training, and the share of them the model ranks right is logged (eval_accuracy) at step 0 and every
    # eval_steps (unset: every save_steps). 0: none.
    eval_groups: int = 0
    eval_steps: int | None = None
    save_total_limit: int | None = None
    logging_steps: int = 1
    seed: int = 42
    # auto: bf16 where the hardware computes it natively (CUDA with bf16; a CPU with AVX-512 BF16 or AMX, unless
    # dtype is float16 there), else the model's own dtype; "yes" forces it (on a CPU without those instructions it is
    # ~100x slower than float32)
    bf16: Literal["auto", "yes", "no"] = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward: 7-8B models on one GPU
    # A step's prompts run as length-sorted chunks of this many rows, each padded to its own longest (0: one padded
    # batch): the same scores with less padding computed and kept for backward (relscope.training.module)
    chunk_rows: int = 0
    # Pad each batch to a multiple of this many tokens (1: to its longest prompt only). A few batch shapes instead of
    # one per length: on CPU, resident memory then stops climbing with each new shape (oneDNN keeps kernels per shape,
    # glibc keeps freed blocks per size) and kernels are reused (BENCHMARKS.md, issue 19)
    pad_to_multiple_of: int = 1
    dtype: str = "auto"
    device: str | None = None
    # Bit-identical reruns on GPU too (deterministic cuBLAS/cuDNN kernels, slower); CPU runs are deterministic anyway.
    deterministic: bool = False
    dev: DevSettings | None = None
    report_to: tuple[str, ...] = ("tensorboard",)

    def __post_init__(self) -> None:
        for key in ("negatives", "max_steps", "batch_size", "grad_accum", "save_steps", "logging_steps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be a positive integer (>= 1), got {getattr(self, key)}")
        if self.negatives > 1000:  # prompts per group per step: more is a typo, and would not fit in memory
            raise ValueError(f"negatives must be at most 1000, got {self.negatives}")
        if isinstance(self.chunk_rows, bool) or self.chunk_rows < 0:
            raise ValueError(f"chunk_rows must be 0 (one padded batch) or a positive number of rows, got "
                             f"{self.chunk_rows}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if (type(self.pad_to_multiple_of) is not int
                or not 1 <= self.pad_to_multiple_of <= self.max_length):  # wider pads every batch past any prompt
            raise ValueError(f"pad_to_multiple_of must be a whole number of tokens from 1 (no rounding) to max_length "
                             f"({self.max_length}), got {self.pad_to_multiple_of!r}")
        if isinstance(self.eval_groups, bool) or self.eval_groups < 0:
            raise ValueError(f"eval_groups must be 0 (none) or a positive number of groups, got {self.eval_groups}")
        if self.eval_steps is not None and self.eval_steps <= 0:
            raise ValueError(f"eval_steps must be a positive integer (or unset: save_steps), got {self.eval_steps}")
        if self.save_at is not None:
            wrong = [s for s in self.save_at if isinstance(s, bool) or not 1 <= s <= self.max_steps]
            if not self.save_at or wrong:
                raise ValueError(f"save_at: steps from 1 to max_steps ({self.max_steps}), got "
                                 f"{wrong[0] if wrong else 'an empty list'}")
            object.__setattr__(self, "save_at", tuple(sorted(set(self.save_at))))
        if self.save_total_limit is not None and self.save_total_limit <= 0:
            raise ValueError(f"save_total_limit must be >= 1 (or unset to keep all), got {self.save_total_limit}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.min_grade < 1:
            raise ValueError(f"min_grade must be >= 1 (grade 0 marks the non-relevant passages), got {self.min_grade}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if not is_finite_number(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        for key in ("weight_decay", "max_grad_norm"):  # max_grad_norm 0: no clipping
            if not is_finite_number(getattr(self, key)) or getattr(self, key) < 0:
                raise ValueError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")
        if not is_finite_number(self.hard_fraction) or not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in [0, 1], got {self.hard_fraction}")
        self._check_choices()
        if not self.train:
            raise ValueError("train is empty; give Tevatron .jsonl files or TREC folders with qrels")

    def _check_choices(self) -> None:
        """Names (scheduler, dtype, reporters, objective, template, head) checked before any work starts."""
        from relscope.models.heads import HEADS
        from relscope.prompts.templates import TEMPLATES
        from relscope.training.objectives import OBJECTIVES

        check_dtype_name(self.dtype)
        check_device_name(self.device)
        named = [("scheduler", self.scheduler, SCHEDULERS), *(("report_to", r, REPORTERS) for r in self.report_to)]
        for key, value, choices in named:
            if value not in choices:
                raise ValueError(f"{key}: {value!r} is not one of {', '.join(choices)}"
                                 + ("; [] reports nowhere" if key == "report_to" else ""))
        try:
            objective = OBJECTIVES.get(self.objective)
            template = TEMPLATES.get(self.template or objective.template)
            if self.head is not None:
                HEADS.get(self.head)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        if (template.kind == "pairwise") != (objective.name == "pairwise"):
            raise ValueError(f"template: the {objective.name} objective cannot use the {template.kind} template "
                             f"{template.name!r}; leave template unset to use {objective.template!r}")
        if objective.graded and self.hard_fraction == 0:
            raise ValueError(f"hard_fraction 0 with objective {objective.name}: its lower-graded passages are drawn "
                             "with the hard negatives, so there would be none; give a share above 0")

    def check_paths(self) -> None:
        """Every train: path (and the dev folder) exists and can be read, without reading the data: one error
        naming the first that cannot. For callers that must fail before any work (the study's first stage)."""
        from relscope.data.dataset import data_path

        for source in map(data_path, self.train):
            if source.is_dir():
                for name in ("queries.tsv", "qrels.txt", "collection.tsv"):
                    _check_readable(source / name, f"a TREC training folder needs {name}")
            else:
                _check_readable(source, "give a group .jsonl file or a TREC folder")
        if self.dev is not None:
            self.dev.check_paths()


def _check_readable(path: Path, fix: str) -> None:
    """`path` exists, is not a folder and may be read (checked without reading: a pipe must keep its data)."""
    if not path.exists():
        raise DataError(f"{path}: training data not found; {fix}")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file; {fix}")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot be read (permission denied); check its permissions")


def load_train_config(path: str | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file (or none) with `--set key.sub=value` overrides applied."""
    values = load_yaml(path) if path else {}
    for item in overrides:
        set_dotted(values, item)
    return from_mapping(TrainConfig, values, path or "train options")
