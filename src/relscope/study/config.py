"""`relscope study CONFIG`: one YAML file for the whole study, checked strictly before any work starts.

The `train:` section is a full `relscope train` config (the same keys); its `model` defaults to the
study's. Every other section sizes one stage; the defaults are the CPU study's (configs/study-cpu.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relscope.config import from_mapping, load_yaml
from relscope.errors import ConfigError
from relscope.training.config import DevSettings, TrainConfig

RELEVANCE_GROUPS = "$RELSCOPE_DATA/relevance-mi/msmarco.jsonl"  # the patching study's 183 MS MARCO queries


@dataclass(frozen=True)
class AblationSettings:
    """LoRA anatomy on the last checkpoint: ΔW statistics and the update kept only in some modules/layers."""

    variants: tuple[str, ...] = ("attn-only", "mlp-only", "up+gate", "down", "all@0.15625-0.5")
    max_queries: int | None = None  # ablations on the first n dev queries (each variant is one rerank)


@dataclass(frozen=True)
class RepresentationSettings:
    """Training dynamics, document-to-query attention and linear probes, base vs fine-tuned."""

    groups: str = RELEVANCE_GROUPS
    window: int = 10  # loss smoothing window (steps) for the cliff
    attention_groups: int = 20
    probe_groups: int = 60
    folds: int = 5
    max_length: int = 256


@dataclass(frozen=True)
class MechanismSettings:
    """Activation patching (base and fine-tuned), heads, knockouts and the base-vs-tuned comparison."""

    groups: str = RELEVANCE_GROUPS
    max_pairs: int = 10
    head_positions: tuple[str, ...] = ("document", "query", "instruction", "last")
    heads_pairs: int = 20
    knockout_size: int = 10  # heads per knocked-out set
    knockout_groups: int = 30  # groups judged (two prompts each) for judgment F1
    knockout_queries: int | None = 8  # dev queries reranked for nDCG@10 under each knockout
    random_draws: int = 2
    min_gap: float = 0.1  # pairs whose clean-corrupted logit difference gap is below this are left out
    max_length: int = 256

    def __post_init__(self) -> None:
        for key in ("max_pairs", "heads_pairs", "knockout_size", "knockout_groups", "random_draws"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)}")


@dataclass(frozen=True)
class StudyConfig:
    name: str
    model: str
    train: TrainConfig
    dev: DevSettings = field(default_factory=lambda: DevSettings("$RELSCOPE_DATA/trec-dl-2019"))
    ablation: AblationSettings = field(default_factory=AblationSettings)
    representations: RepresentationSettings = field(default_factory=RepresentationSettings)
    mechanisms: MechanismSettings = field(default_factory=MechanismSettings)
    budget_minutes: float | None = None  # the stated time budget: the report says whether the run kept to it


def load_study_config(path: str | Path) -> StudyConfig:
    """The study config at `path`; errors name the file and key."""
    values: dict[str, Any] = load_yaml(path)
    train = values.get("train")
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: key 'train' must be a mapping of `relscope train` keys (model, train, "
                          "objective, lora, max_steps, ...)")
    if "model" in values:
        if train.get("model", values["model"]) != values["model"]:
            raise ConfigError(f"{path}: train.model {train['model']!r} differs from model {values['model']!r}; "
                              "drop train.model (it defaults to the study's)")
        values = {**values, "train": {**train, "model": values["model"]}}
    return from_mapping(StudyConfig, values, str(path))
