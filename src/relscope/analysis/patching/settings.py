"""The settings of `relscope patch`, `relscope heads` and `relscope knockout`: one frozen dataclass per job.

Each field's type, default and help text live here once; `relscope.cli` derives the commands' flags from them
(`relscope.config.option`), the study builds them by keyword, and the Python API passes them to the jobs. Every value
is checked where it enters (`__post_init__`): one ConfigError naming the flag, before any model is loaded. No torch
here: `relscope <command> --help` reads this module.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Literal

from relscope.analysis.patching.sites import (
    COMPONENTS,
    ESTIMATORS,
    HEAD_GROUPS,
    LRP_RULES,
    NEGATIVE_KINDS,
    PERTURBATIONS,
    POSITION_GROUPS,
    QK_ESTIMATORS,
)
from relscope.analysis.settings import RELEVANCE_GROUPS
from relscope.config import DTYPES, option
from relscope.data.dev import DevSettings
from relscope.errors import ConfigError, short
from relscope.measures import DEFAULT_MEASURES, check_measures
from relscope.prompts.templates import LAYOUTS

# The model, adapter and clean/corrupted groups: the same fields (and flags) in patch, heads and knockout.

def _groups() -> Any:
    return field(default=RELEVANCE_GROUPS, metadata=option(
        "Tevatron group jsonl, or a TREC folder (qrels + passages) to build groups from; the default is the "
        "patching study's 183 MS MARCO queries"))


def _model() -> Any:
    return field(default="smollm2-135m-instruct", metadata=option("the model (alias, HF id, folder or .gguf)",
                                                                  positional=True, required=True))


def _adapter(verb: str) -> Any:
    return field(default=None, metadata=option(f"a checkpoint-<step>/ or PEFT adapter to {verb} instead of the base",
                                               positional=True))


STUDY_LAYOUT = "document-query-instruction"  # 002's prompts: the query follows (and can attend to) the document
QUERY_BLOCKS = ("query>document", "document>query")  # 002's: the query (target) attending to the document (source)


def check_block_layout(block: str, layout: str, flag: str) -> None:
    """Refuse a query/document block that the causal mask leaves empty in `layout` (its rows come first)."""
    rows, columns = block.split(">")
    order = layout.split("-")
    if order.index(rows) < order.index(columns):
        other = ">".join((columns, rows))
        raise ConfigError(f"{flag} {block}: with --layout {layout} the {rows} comes before the {columns}, and under "
                          f"the causal mask it cannot attend to it; use --layout {STUDY_LAYOUT} (the study's), or "
                          f"{flag} {other}")


def _query_block(what: str) -> Any:
    return field(default=QUERY_BLOCKS[0], metadata=option(
        f"the query/document block of {what}: query>document, the study's (the query attending to the document), "
        "or document>query (for a layout with the query first)", choices=QUERY_BLOCKS))


def _layout() -> Any:
    return field(default=STUDY_LAYOUT, metadata=option(
        "the order of the prompt's parts: study 002 puts the document first, so that query positions come after it "
        "and can carry effects", choices=LAYOUTS))


def _template() -> Any:
    return field(default=None, metadata=option("yes_no (clean: relevant, corrupted: non-relevant) or pairwise "
                                               "(swapped); default: the adapter's, else yes_no"))


def _negative_kind() -> Any:
    return field(default="hard", metadata=option("the non-relevant passage", flag="--negatives",
                                                 choices=NEGATIVE_KINDS))


def _max_length() -> Any:
    return field(default=None, metadata=option("prompt tokens (default: the adapter's, else 256)"))


@dataclass(frozen=True)
class PatchSettings:
    """`relscope patch MODEL [ADAPTER]`: the layer x component x position-group sweep (and per head, per score)."""

    groups: str = _groups()
    model: str = _model()
    adapter: str | None = _adapter("patch")
    template: str | None = _template()
    layout: str = _layout()
    max_pairs: int | None = field(default=20, metadata=option("pairs to patch (0: all)", unset_as=0))  # None: all
    negative_kind: str = _negative_kind()
    perturbation: str = field(default="negative", metadata=option(
        "negative: relevant vs non-relevant passage (pairwise: swapped order); inject: the non-relevant passage with "
        "vs without the query's words written in after its first word", choices=PERTURBATIONS))
    components: tuple[str, ...] = field(default=COMPONENTS, metadata=option("components to patch",
                                                                            choices=COMPONENTS))
    positions: tuple[str, ...] = field(default=POSITION_GROUPS, metadata=option("position groups to patch",
                                                                                choices=POSITION_GROUPS))
    layers: tuple[int, ...] | None = field(default=None, metadata=option("layers to patch (default: all)"))
    min_gap: float = field(default=0.1, metadata=option(
        "exclude pairs whose |LD_clean - LD_corrupted| is below this"))
    max_length: int | None = _max_length()
    batch_size: int = field(default=16, metadata=option("patch variants per forward"))
    top: int = 15
    heads: bool = field(default=False, metadata=option("also patch every head at each of --head-positions"))
    head_positions: tuple[str, ...] = field(default=HEAD_GROUPS, metadata=option(
        "position groups of the per-head patching; knockouts use document query instruction last",
        choices=POSITION_GROUPS))
    scores: bool = field(default=False, metadata=option(
        "also patch every head's attention weights on three blocks: the query/document block (--query-block), last "
        "token to document, last token to query"))
    query_block: str = _query_block("attention-score patching (--scores)")
    qk: bool = field(default=False, metadata=option(
        "also patch every head's query vectors and every key/value head's key vectors at each of --head-positions "
        "(AtP*'s query and key nodes; ie_queries.npz, ie_keys.npz)"))
    attribution: str | None = field(default=None, metadata=option(
        "estimate every site's effect instead of patching it (one backward for all sites): atp (attribution "
        "patching), atp-star (AtP*: GradDrop, |IE| for ranking, one backward per layer, and the QK fix for --qk), "
        "relp (relevance patching: AtP with LRP's rules in the backward), ig (integrated gradients along the "
        "corrupted -> clean embeddings, EAP-IG's; --ig-steps), atp-qk (atp with AtP*'s QK fix on --qk's sites, "
        "signed), atp-nearest (relscope's: residual sites linearised about the nearer of the clean and corrupted "
        "runs, one backward more than atp)",
        choices=ESTIMATORS))
    ig_steps: int = field(default=5, metadata=option("points on the path for --attribution ig (EAP-IG's paper: 5)"))
    relp_rules: tuple[str, ...] = field(default=LRP_RULES, metadata=option(
        "the LRP rules of --attribution relp: norm (LN-rule), activation (Identity), gate (Half), attention (AH); "
        "RelP's set is all four", choices=LRP_RULES))
    validate: bool = field(default=False, metadata=option(
        "with --attribution: also patch every site exactly and report their agreement per site type (Pearson, "
        "Spearman, top-20 recall, cost; validation.csv and a figure)"))
    fast: bool = True
    dtype: str = field(default="auto", metadata=option("auto: bf16 on CUDA, fp32 on CPU", choices=DTYPES))

    def __post_init__(self) -> None:
        """Every value checked where it enters (the CLI, a study config, the API): one ConfigError naming the option,
        before any model is loaded. Lists are normalised once: layers sorted and each once, the others each once in
        the order given, so labels and sites agree everywhere. max_pairs 0 means every pair (None)."""
        _check_model_and_groups(self)
        _choice(self, "query_block", QUERY_BLOCKS)
        if self.scores:
            check_block_layout(self.query_block, self.layout, "--query-block")
        _max_pairs(self)
        _choice(self, "perturbation", PERTURBATIONS)
        _choice(self, "dtype", DTYPES)
        for key, known in (("components", COMPONENTS), ("positions", POSITION_GROUPS),
                           ("head_positions", POSITION_GROUPS)):
            _names(self, key, known)
        if self.layers is not None:
            _layers(self)
        gap = self.min_gap
        if isinstance(gap, bool) or not isinstance(gap, Real) or not math.isfinite(gap) or gap < 0:
            _bad(self, "min_gap", gap, "must be a finite number >= 0 (e.g. 0.1)")
        _whole(self, "batch_size", 1)
        _whole(self, "top", 1)
        for key in ("heads", "scores", "qk", "validate", "fast"):
            if not isinstance(getattr(self, key), bool):
                _bad(self, key, getattr(self, key), "must be true or false")
        if self.attribution is not None:
            _choice(self, "attribution", ESTIMATORS)
            if self.qk and self.attribution not in QK_ESTIMATORS:
                _bad(self, "attribution", self.attribution, f"has no estimate for --qk's query and key sites: use "
                     f"{' or '.join(QK_ESTIMATORS)}, or drop --qk")
        _whole(self, "ig_steps", 1)
        _names(self, "relp_rules", LRP_RULES)
        if self.validate and self.attribution is None:
            _bad(self, "validate", self.validate,
                 "needs an estimator to validate: add --attribution atp (or atp-star, relp, ig)")


ABLATIONS = ("mean", "corrupted")  # what an edge outside a circuit carries (edges.py)


@dataclass(frozen=True)
class CircuitSettings:
    """`relscope circuit MODEL [ADAPTER]`: edge attribution (EAP-IG) and the faithfulness of its top-edge circuits."""

    groups: str = _groups()
    model: str = _model()
    adapter: str | None = _adapter("analyse")
    template: str | None = _template()
    layout: str = _layout()
    max_pairs: int | None = field(default=20, metadata=option("pairs (0: all)", unset_as=0))  # None: all
    negative_kind: str = _negative_kind()
    max_length: int | None = _max_length()
    min_gap: float = field(default=0.1, metadata=option(
        "leave out pairs whose |LD_clean - LD_corrupted| is below this"))
    ig_steps: int = field(default=5, metadata=option(
        "points on the corrupted -> clean path of the embeddings the edge gradients are averaged over (1: EAP)"))
    ablation: str = field(default="mean", metadata=option(
        "what an edge outside the circuit carries: its writer's mean over the pairs' prompts, or the pair's "
        "corrupted value (interchange)", choices=ABLATIONS))
    batch_size: int = field(default=4, metadata=option("circuits (or path points) per forward"))
    target: float = field(default=0.8, metadata=option(
        "the reported circuit is the smallest top-k one whose recovered share of the logit difference is within "
        "1 - target of the whole model's (0.8: 0.8 to 1.2)"))
    dtype: str = field(default="auto", metadata=option("auto: bf16 on CUDA, fp32 on CPU", choices=DTYPES))

    def __post_init__(self) -> None:
        """Checked before any model loads; max_pairs 0 means every pair (None)."""
        _check_model_and_groups(self)
        _max_pairs(self)
        _choice(self, "ablation", ABLATIONS)
        _choice(self, "dtype", DTYPES)
        _whole(self, "ig_steps", 1)
        _whole(self, "batch_size", 1)
        for key, high in (("min_gap", math.inf), ("target", 1.0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= high:
                _bad(self, key, value, f"must be a number from 0 to {high}")

    def patch_settings(self) -> PatchSettings:
        """The model and prompts, as the patching job has them."""
        return PatchSettings(groups=self.groups, model=self.model, adapter=self.adapter, template=self.template,
                             layout=self.layout, max_pairs=self.max_pairs, negative_kind=self.negative_kind,
                             max_length=self.max_length, dtype=self.dtype)


@dataclass(frozen=True)
class HeadsSettings:
    """`relscope heads MODEL [ADAPTER]`: interaction scores, logit lens and direct contributions of every head."""

    groups: str = _groups()
    model: str = _model()
    adapter: str | None = _adapter("analyse")
    template: str | None = _template()
    layout: str = _layout()
    max_pairs: int | None = field(default=50, metadata=option("pairs (0: all)", unset_as=0))  # None: all
    negative_kind: str = _negative_kind()
    max_length: int | None = _max_length()
    ie_heads: str | None = field(default=None, metadata=option(
        "a patch run's ie_heads.npz: its top heads are outlined in the heatmaps"))
    ie_group: str = field(default="last", metadata=option("the position group of --ie-heads to rank by"))
    marked: int = field(default=10, metadata=option("how many top-IE heads to outline"))
    query_block: str = _query_block("the attention interaction score")

    def __post_init__(self) -> None:
        """Checked before any model loads; max_pairs 0 means every pair (None); --ie-heads must exist."""
        _check_model_and_groups(self)
        _choice(self, "query_block", QUERY_BLOCKS)
        check_block_layout(self.query_block, self.layout, "--query-block")
        _max_pairs(self)
        _whole(self, "marked", 0)
        _check_ie_heads(self, required=False)

    def patch_settings(self) -> PatchSettings:
        """The model, prompts and pairs to read the heads on, as the patching job has them."""
        return PatchSettings(groups=self.groups, model=self.model, adapter=self.adapter, template=self.template,
                             layout=self.layout, max_pairs=self.max_pairs, negative_kind=self.negative_kind,
                             max_length=self.max_length)


@dataclass(frozen=True)
class KnockoutSettings:
    """`relscope knockout MODEL [ADAPTER] --ie-heads FILE`: head sets ablated; judgment F1 (and nDCG@10) drops."""

    ie_heads: str = field(metadata=option(
        "the ie_heads.npz of a `relscope patch --heads` run (best with --head-positions document query instruction "
        "last): it ranks the heads"))
    groups: str = _groups()
    model: str = _model()
    adapter: str | None = _adapter("knock out")
    template: str | None = _template()
    layout: str = _layout()
    negative_kind: str = _negative_kind()
    max_length: int | None = _max_length()
    max_groups: int = field(default=100, metadata=option("groups judged, two prompts each"))
    size: int | None = field(default=None, metadata=option(
        "heads per top set, N (unset: study 002's share, 20 of 1,024 heads, of this model's heads)"))
    rank: Literal["signed", "magnitude"] = field(default="signed", metadata=option(
        "rank heads by their mean IE (signed: the study's highest effect) or by |mean IE|"))
    positions: tuple[str, ...] | None = field(default=None, metadata=option(
        "ablate every set at these positions (unset: each top set at its own group, Mixed likewise, Random at all)",
        choices=POSITION_GROUPS))
    zero: bool = field(default=False, metadata=option("zero-ablate instead of mean-ablate"))
    random_draws: int = field(default=3, metadata=option("random head sets"))
    data: str | None = field(default=None, metadata=option(
        "a TREC folder to rerank for nDCG@10 (e.g. $RELSCOPE_DATA/trec-dl-2019)"))
    top_k: int = field(default=20, metadata=option("candidates reranked per query of --data"))
    max_queries: int | None = field(default=None, metadata=option("the first n queries of --data only"))
    measures: tuple[str, ...] = DEFAULT_MEASURES  # not a flag: the study's dev.measures, recorded with the dev run

    def __post_init__(self) -> None:
        """The knockout's options, range-checked before any file is read or model loaded; --ie-heads must exist."""
        _check_model_and_groups(self)
        for key, least in (("random_draws", 0), ("max_groups", 1)):
            _whole(self, key, least)
        if self.size is not None:
            _whole(self, "size", 1)
        if self.rank not in ("signed", "magnitude"):
            _bad(self, "rank", self.rank, "is not one of signed, magnitude")
        positions = self.positions
        if positions is not None:
            if isinstance(positions, str) or not isinstance(positions, Sequence) or not positions or any(
                    p not in POSITION_GROUPS for p in positions):
                shown = " ".join(map(str, positions)) if isinstance(positions, Sequence) else str(positions)
                raise ConfigError(f"--positions {shown[:60]}: give one or more of {', '.join(POSITION_GROUPS)}")
            object.__setattr__(self, "positions", tuple(positions))
        if not isinstance(self.zero, bool):
            _bad(self, "zero", self.zero, "must be true or false")
        if self.data is not None:
            self.dev_settings()  # its own checks of top_k, max_queries and measures
        else:
            _whole(self, "top_k", 1)
            if self.max_queries is not None:
                _whole(self, "max_queries", 1)
            check_measures(self.measures)
        _check_ie_heads(self, required=True)

    def patch_settings(self) -> PatchSettings:
        """The model and prompts to knock heads out of, as the patching job has them."""
        return PatchSettings(groups=self.groups, model=self.model, adapter=self.adapter, template=self.template,
                             layout=self.layout, max_pairs=None, negative_kind=self.negative_kind,
                             max_length=self.max_length)

    def dev_settings(self) -> DevSettings | None:
        """The development run reranked under each knockout (None without --data)."""
        return None if self.data is None else DevSettings(self.data, self.top_k, self.max_queries, self.measures)


def _flag(settings: object, key: str) -> str:
    """The command-line name of field `key`, from its `option` metadata: the field's own name when it is not a flag
    (a positional argument, or a field only the API and the study set)."""
    found = {f.name: f for f in dataclasses.fields(settings)}.get(key)  # type: ignore[arg-type]
    spec = found.metadata.get("cli") if found is not None else None
    if spec is None or spec.positional:
        return key
    if spec.flag:
        return spec.flag
    name = key.replace("_", "-")
    return f"--no-{name}" if found.default is True else f"--{name}"


def _bad(settings: object, key: str, value: Any, what: str) -> None:
    flag = _flag(settings, key)
    name = key if flag == key else f"{flag} ({key})"
    raise ConfigError(f"{name} {short(value)}: {what}")


def _whole(settings: object, key: str, least: int, hint: str = "") -> None:
    value = getattr(settings, key)
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        _bad(settings, key, value, f"must be a whole number >= {least}{hint}")


def _choice(settings: object, key: str, known: Sequence[str]) -> None:
    if getattr(settings, key) not in known:
        _bad(settings, key, getattr(settings, key), f"is not one of {', '.join(known)}")


def _names(settings: object, key: str, known: Sequence[str]) -> None:
    """A non-empty list of known names, each kept once in the order given (a repeat would repeat grid rows)."""
    value = getattr(settings, key)
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        _bad(settings, key, value, f"must be a non-empty list of {', '.join(known)}")
    unknown = [v for v in value if v not in known]
    if unknown:
        _bad(settings, key, unknown[0], f"is not one of {', '.join(known)}")
    object.__setattr__(settings, key, tuple(dict.fromkeys(value)))


def _layers(settings: PatchSettings) -> None:
    """Layer indices, sorted and each once: the grid's layer axis is in this order, and so are the sites."""
    layers = settings.layers
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        _bad(settings, "layers", layers, "must be a non-empty list of layer indices (leave it out for every layer)")
    wrong = [x for x in layers if isinstance(x, bool) or not isinstance(x, Integral) or x < 0]
    if wrong:
        _bad(settings, "layers", wrong[0], "is not a layer index; layers count from 0")
    object.__setattr__(settings, "layers", tuple(sorted({int(x) for x in layers})))


def _max_pairs(settings: PatchSettings | HeadsSettings) -> None:
    """A whole number of pairs, or None for every pair (the command line's --max-pairs 0)."""
    if settings.max_pairs is not None:
        _whole(settings, "max_pairs", 1, "; 0 on the command line patches every pair")


def _check_model_and_groups(settings: PatchSettings | HeadsSettings | KnockoutSettings) -> None:
    """The fields patch, heads and knockout share: the groups, the model, its adapter and prompts."""
    for key in ("groups", "model"):
        if not isinstance(getattr(settings, key), str) or not getattr(settings, key).strip():
            _bad(settings, key, getattr(settings, key), "must be a non-empty string")
    for key in ("adapter", "template"):
        value = getattr(settings, key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            _bad(settings, key, value, "must be a non-empty string, or left out")
    _choice(settings, "negative_kind", NEGATIVE_KINDS)
    _choice(settings, "layout", LAYOUTS)
    if settings.max_length is not None:
        _whole(settings, "max_length", 8)


def _check_ie_heads(settings: HeadsSettings | KnockoutSettings, required: bool) -> None:
    """The patch run's ie_heads.npz exists (read later, before the model loads)."""
    path = settings.ie_heads
    if path is None and not required:
        return
    if not isinstance(path, str) or not path.strip():
        _bad(settings, "ie_heads", path, "must be the path of a `relscope patch --heads` run's ie_heads.npz")
    if not os.path.isfile(path):
        raise ConfigError(f"--ie-heads {path}: not found; give the ie_heads.npz of a `relscope patch --heads` run")
