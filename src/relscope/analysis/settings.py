"""The settings of the analysis commands: one frozen dataclass per job, checked where the values enter.

Each field's type, default and help text live here once; `relscope.cli` derives the command's flags from them
(`relscope.config.option`), the study builds them by keyword, and the Python API passes them to the job. No torch
here: `relscope <command> --help` reads this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, Literal

from relscope.config import option
from relscope.data.dataset import DL19, RELEVANCE_GROUPS
from relscope.data.dev import DevSettings
from relscope.errors import ConfigError, check_range
from relscope.measures import DEFAULT_MEASURES
from relscope.training.config import load_train_config

if TYPE_CHECKING:
    from relscope.training.config import TrainConfig


def _whole(value: object, least: int = 1) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True)
class CompareSettings:
    """`relscope compare RUN_A RUN_B`: do two patch runs rely on the same components?"""

    run_a: str = field(metadata=option("a `relscope patch` output folder", positional=True))
    run_b: str = field(metadata=option("another, over the same components (or use --depth-bins)", positional=True))
    heads: bool = field(default=False, metadata=option("compare the per-head patching (ie_heads.npz)"))
    p: float = field(default=0.9, metadata=option("RBO persistence, in (0, 1): lower is more top-heavy"))
    top: int = field(default=20, metadata=option("top components listed and overlapped"))
    depth_bins: int | None = field(default=None, metadata=option(
        "average layers into N slices of relative depth (models of different depth); unset: layer by layer"))
    signed: bool = field(default=False, metadata=option("rank by signed mean IE instead of |mean IE|"))

    def __post_init__(self) -> None:
        p = self.p
        if isinstance(p, bool) or not isinstance(p, Real) or not math.isfinite(p) or not 0.0 < p < 1.0:
            raise ConfigError(f"--p {p}: RBO persistence must be between 0 and 1 (exclusive), e.g. 0.9")
        if not _whole(self.top):
            raise ConfigError(f"--top {self.top}: must be a whole number >= 1")
        if self.depth_bins is not None and not _whole(self.depth_bins):
            raise ConfigError(f"--depth-bins {self.depth_bins}: must be a whole number >= 1 (or left out to compare "
                              "layer by layer)")


# -- dev runs, training runs -------------------------------------------------------------------

DEV_DATA = DL19  # the ranking task every figure is measured on


def dev_fields(dev: DevSettings) -> dict[str, Any]:
    """A dev run as the flat fields of a job's settings (`Settings(..., **dev_fields(dev))`)."""
    return {"data": dev.data, "top_k": dev.top_k, "max_queries": dev.max_queries, "measures": dev.measures}


@dataclass(frozen=True, kw_only=True)
class _DevRun:
    """The dev run a job reranks (flat, one flag each); `dev` is it as the data layer's DevSettings."""

    data: str = field(default=DEV_DATA, metadata=option("dev TREC folder"))
    top_k: int = field(default=20, metadata=option("rerank this many BM25 passages"))
    max_queries: int | None = field(default=None, metadata=option("the first n queries only (unset: all)"))
    measures: tuple[str, ...] = DEFAULT_MEASURES  # not a flag: the study's dev.measures

    @property
    def dev(self) -> DevSettings:
        """The dev run these settings rerank."""
        return DevSettings(self.data, self.top_k, self.max_queries, self.measures)

    def __post_init__(self) -> None:
        self.dev  # noqa: B018 - DevSettings checks the ranges (--top-k, --max-queries, measures)


@dataclass(frozen=True, kw_only=True)
class _TrainRuns:
    """A train config (YAML + overrides) that a job trains several variants of."""

    config: str = field(metadata=option("a train config (configs/train-*.yaml)"))
    overrides: tuple[str, ...] = field(default=(), metadata=option(
        "override a config key, dotted for nested ones, value in YAML: --set lora.targets=[q,v] (repeatable)",
        flag="--set", metavar="KEY=VALUE", repeat=True))

    def train_config(self) -> TrainConfig:
        """The TrainConfig: the YAML file with the overrides applied, checked."""
        return load_train_config(self.config, self.overrides)


def _check_epsilon(epsilon: float) -> None:
    check_range("--epsilon", epsilon, 0)


# -- relscope lora -----------------------------------------------------------------------------

DEFAULT_VARIANTS = ("none", "mlp-only", "attn-only", "all",  # Table 3
                    # the source's layer ranges 5-15, 0-4+16-31, 5-31, 0-15 of 32 layers, as fractions of depth
                    "all@0.15625-0.5", "all@0.0-0.15625+0.5-1.0", "all@0.15625-1.0", "all@0.0-0.5",
                    "up+gate", "down")  # Table 4
EPSILON_HELP = "converged = first step within epsilon of the best nDCG@10"


@dataclass(frozen=True)
class CheckpointsSettings(_DevRun):
    """`relscope lora checkpoints RUN_DIR`: every checkpoint of a training run on a dev run."""

    run_dir: str = field(metadata=option("the --out folder of relscope train", positional=True))
    epsilon: float = field(default=0.01, metadata=option(EPSILON_HELP))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_epsilon(self.epsilon)


@dataclass(frozen=True)
class SweepRankSettings(_DevRun, _TrainRuns):
    """`relscope lora sweep-rank --config C`: train one config at several LoRA ranks and tabulate them."""

    ranks: tuple[int, ...] = field(default=(1, 2, 8, 32), metadata=option("LoRA ranks (alpha/rank is kept)"))
    epsilon: float = field(default=0.01, metadata=option(EPSILON_HELP))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_epsilon(self.epsilon)


@dataclass(frozen=True)
class AblateSettings(_DevRun):
    """`relscope lora ablate ADAPTER`: metrics with the LoRA update kept only in some modules/layers."""

    adapter: str = field(metadata=option("a checkpoint-<step>/ folder or any PEFT LoRA adapter folder",
                                         positional=True))
    variants: tuple[str, ...] = field(default=DEFAULT_VARIANTS, metadata=option(
        "'<modules>[@<layers>]': presets none, mlp-only, attn-only, all, up+gate, down, or projections joined by "
        "'+'; layers like 5-15, 0-4+16-31, 0.5-1.0; by default the source study's Tables 3 and 4"))
    model: str | None = field(default=None, metadata=option(
        "base model of an external adapter (unset: its adapter_config's)"))
    template: str | None = field(default=None, metadata=option(
        "prompt template of an external adapter (unset: yes_no)"))


@dataclass(frozen=True)
class StatsSettings:
    """`relscope lora stats ADAPTER`: Frobenius norm, spectrum and effective rank of every delta W."""

    adapter: str = field(metadata=option("a checkpoint-<step>/ folder or any PEFT LoRA adapter folder",
                                         positional=True))
    model: str | None = field(default=None, metadata=option(
        "base model of an external adapter (unset: its adapter_config's)"))


# -- relscope dynamics, relscope freeze --------------------------------------------------------

@dataclass(frozen=True)
class DynamicsSettings:
    """`relscope dynamics RUN_DIR`: training curves, the loss cliff, per-layer gradient norms."""

    run_dir: str = field(metadata=option("the --out folder of relscope train (log.jsonl, grad_norms.npz)",
                                         positional=True))
    window: int = field(default=25, metadata=option("smoothing window in steps for the loss cliff"))
    after: int = field(default=0, metadata=option("look for the cliff after this step only"))

    def __post_init__(self) -> None:
        if not _whole(self.window):
            raise ConfigError(f"--window {self.window!r}: must be a whole number of steps >= 1 (e.g. 25)")
        if not _whole(self.after, 0):
            raise ConfigError(f"--after {self.after!r}: must be a step number >= 0")


# 001 Part 5: only layers 10-19, 20-31, 0-19, or all of Phi-3's 32 trainable, as the same fractions of any depth
DEFAULT_FREEZE_VARIANTS = ("0.3125-0.625", "0.625-1.0", "0.0-0.625", "all")


@dataclass(frozen=True)
class FreezeSettings(_DevRun, _TrainRuns):
    """`relscope freeze --config C`: train with only some layer groups trainable; compare them."""

    variants: tuple[str, ...] = field(default=DEFAULT_FREEZE_VARIANTS, metadata=option(
        "trainable layers: early, middle, late (thirds), joined by '+', all, or ranges like 0-9 or 0.25-0.75; by "
        "default study 001's 10-19, 20-31, 0-19 and all of 32 layers, as fractions of depth"))


# -- relscope probe, relscope attention --------------------------------------------------------

STUDY_001_LAYERS = (0, 8, 16, 24, 31)  # 001: its attention maps, probes and PCA at these of Phi-3's 32 layers


def study_layers(depth: int, hidden_states: bool) -> list[int]:
    """001's layers 0, 8, 16, 24, 31 as the same fractions of this model's depth. For hidden states (0: the
    embeddings, `depth` + 1 of them) 001's index k of 33 states maps to k / 32 of the depth; for attention layers
    (0 to depth - 1), k / 31 of the last layer."""
    if hidden_states:
        return sorted({round(k / 32 * depth) for k in STUDY_001_LAYERS})
    return sorted({round(k / 31 * (depth - 1)) for k in STUDY_001_LAYERS})


def _check_layers(layers: tuple[int, ...] | None) -> None:
    for layer in layers or ():
        check_range("--layers", layer, 0, integer=True)


@dataclass(frozen=True)
class _StatesOf:
    """The model (base, and fine-tuned with an adapter) whose states probe and attention read, and the examples."""

    model: str = field(metadata=option("the base model (alias, HF id, folder or .gguf)", positional=True))
    adapter: str | None = field(default=None, metadata=option(
        "a checkpoint-<step>/ or PEFT adapter: base vs fine-tuned", positional=True))
    groups: str = field(default=RELEVANCE_GROUPS, metadata=option(
        "Tevatron group jsonl of labelled examples, by default the 183-query MS MARCO set"))
    template: str | None = field(default=None, metadata=option(
        "yes_no, score or pairwise (unset: the adapter's, else yes_no)"))


@dataclass(frozen=True)
class ProbeSettings(_StatesOf):
    """`relscope probe MODEL [ADAPTER]`: linear probes and PCA on each layer's last-token state."""

    max_groups: int = field(default=100, metadata=option("groups to use; two prompts each"))
    layers: tuple[int, ...] | None = field(default=None, metadata=option(
        "hidden states to probe, 0 the embeddings (unset: study 001's 0, 8, 16, 24, 31 of 32 layers, as the same "
        "fractions of this model's depth)"))
    max_length: int | None = field(default=None, metadata=option(
        "prompt tokens (unset: the adapter's, else 256)"))
    negatives: Literal["hard", "random", "any"] = field(default="hard", metadata=option("negative kind"))
    folds: int = field(default=5, metadata=option("cross-validation folds, split by query"))

    def __post_init__(self) -> None:
        check_range("--max-groups", self.max_groups, 1, integer=True)
        check_range("--folds", self.folds, 2, integer=True)
        _check_layers(self.layers)


@dataclass(frozen=True)
class AttentionSettings(_StatesOf):
    """`relscope attention MODEL [ADAPTER]`: attention mass from document to query tokens."""

    max_groups: int = field(default=25, metadata=option("groups to use; two prompts each"))
    layers: tuple[int, ...] | None = field(default=None, metadata=option(
        "layers to analyse (unset: study 001's 0, 8, 16, 24, 31 of 32, as the same fractions of this model's depth)"))
    max_length: int | None = field(default=None, metadata=option(
        "prompt tokens (unset: the adapter's, else 256)"))

    def __post_init__(self) -> None:
        check_range("--max-groups", self.max_groups, 1, integer=True)
        _check_layers(self.layers)
