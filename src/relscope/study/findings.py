"""The report's opening table: one row per claim of the three source studies that a `relscope study` measures, the
study's words or numbers (quoted through `relscope.study.sources`), ours (read from the stages' outputs) and a
verdict: agrees, disagrees, or too weak to tell.

A verdict is decided from intervals where the outputs have them (knockout bootstrap CIs, probe fold std, patching
std over pairs) and from a stated minimum gap where they do not (ablation means). A claim whose stage output is
missing is "not measured". The rules are stated in full in the table's caption (`caption`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from relscope.analysis import anatomy, attention, dynamics, probe
from relscope.analysis import knockout as ko
from relscope.analysis.patching import job as patching_job
from relscope.evaluation.job import METRICS_FILE
from relscope.study import layout
from relscope.study.sources import TABLE_000_1, TABLE_000_3, TABLE_000_4, TABLE_002_1, WORDS, Quote

if TYPE_CHECKING:
    from relscope.study.config import StudyConfig

AGREES, DISAGREES, WEAK, NOT_MEASURED = "agrees", "disagrees", "too weak to tell", "not measured"
# Without an interval a gap between means can give a direction, never a verdict.
SAME_WAY, OTHER_WAY = "same direction (no interval)", "opposite direction (no interval)"
NOT_SETTING = "not the study's setting"
GAP = 0.05  # nDCG@10: ablation and checkpoint means closer than this are too weak to tell apart (no intervals)
GRAD_AGREES, GRAD_DISAGREES = 0.1, 1.0  # late/early gradient norm: at most 0.1 agrees (001: 0.25/53.1), 1+ disagrees
ATTENTION_SAME, ATTENTION_CHANGED = 0.01, 0.05  # |relative change| of document -> query attention in any layer
NARROW = 0.05  # knockout: intervals wider than this cannot tell "costs the same" from a gap like 002's -3.2% vs -6.5%
Z95 = 1.96  # patching: the peak mean IE's 95% interval, mean ± Z95 · std / sqrt(pairs)
STAGE_COMPONENT = "resid_post"  # patching: the three stages are read off the residual stream after each layer
STAGE_GROUPS = ("document", "instruction", "last")  # 002's early, middle and late position groups, in order
STUDY_METRIC = {ko.F1: "judgment F1", ko.NDCG10: "NDCG@10"}  # our knockout metric -> 002 Table 1's columns
LAYER = "layer"  # attention.csv's first column


@dataclass(frozen=True)
class Finding:
    """One claim: what the study says (quoted), what we measured, and whether the two agree."""

    claim: str
    study: str
    ours: str
    verdict: str

    def row(self) -> dict[str, str]:
        """The findings table's row."""
        return {"claim": self.claim, "source study (quoted)": self.study, "ours": self.ours, "verdict": self.verdict}


# -- reading --------------------------------------------------------------------------------------------

def read_rows(path: Path) -> list[dict[str, str]]:
    """A stage's CSV as dicts by column; [] when the stage did not write it."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def read_json(path: Path) -> dict:
    """A stage's JSON object; {} when absent or not an object (the report's own reader names damage)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def number(value: object) -> float:
    """A cell as a float; NaN when empty or not a number."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def missing(claim: str, study: str, path: Path, root: Path) -> Finding:
    """The row of a claim whose stage output is not there."""
    return Finding(claim, study, f"no {path.relative_to(root)}", NOT_MEASURED)


# -- quoting --------------------------------------------------------------------------------------------

def column(quote: Quote, name: str) -> str:
    """A table quote's cell in the column `name`."""
    return quote.cells[quote.columns.index(name)]


def quoted(quotes: Sequence[Quote], column_part: str) -> str:
    """Table rows of one study cut to the columns whose names contain `column_part`, the names said once:
    '000 Table 3, LLaMa3 NDCG / Mistral NDCG: MHA updates only 0.5987 / 0.5164; MLP updates only ...'."""
    first = quotes[0]
    picked = [i for i, c in enumerate(first.columns) if column_part in c]
    rows = "; ".join(f"{q.text} " + " / ".join(q.cells[i] for i in picked) for q in quotes)
    return f"{first.study} {first.where}, " + " / ".join(first.columns[i] for i in picked) + f": {rows}"


def words(*quotes: Quote) -> str:
    """Sentences of one place in one study, its name said once: '002 Tracing information flow: a; b; c'."""
    return f"{quotes[0].study} {quotes[0].where}: " + "; ".join(q.text for q in quotes)


# -- verdict rules --------------------------------------------------------------------------------------

def gap_verdict(difference: float, gap: float = GAP) -> str:
    """A direction, not a verdict (means without intervals): the study's way when the difference is at least `gap`,
    the other way at `gap` below zero, else too weak to tell."""
    if difference >= gap:
        return SAME_WAY
    return OTHER_WAY if difference <= -gap else WEAK


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two (low, high) intervals share a point."""
    return a[0] <= b[1] and b[0] <= a[1]


def percent(change: float, low: float, high: float) -> str:
    """A relative change with its interval, as 002's Table 1 prints changes: '-12.3% [-20.1%, -4.0%]'."""
    return f"{change:+.1%} [{low:+.1%}, {high:+.1%}]"


# -- 000: where the LoRA update matters -----------------------------------------------------------------

def ablation_means(root: Path) -> dict[str, float]:
    """Dev nDCG@10 by ablation variant (ablations/keep/ablation.csv)."""
    rows = read_rows(root / layout.ABLATIONS / layout.KEEP / f"{anatomy.ABLATION}.csv")
    return {r[anatomy.KEPT_IN]: number(r.get(anatomy.NDCG)) for r in rows}


def interval_verdict(low: float, high: float) -> str:
    """The study's way when the whole 95% interval of (ours - the contrast) is above 0, the other way when below."""
    if low > 0:
        return AGREES
    return DISAGREES if high < 0 else WEAK


def ablation_contrast(root: Path, contrast: str) -> tuple[float, float, float] | None:
    """(difference, low, high) of one of 000's claims from ablation_contrasts.csv; None when it was not written
    (an older run, or a variant of the pair not run)."""
    path = root / layout.ABLATIONS / layout.KEEP / f"{anatomy.CONTRASTS}.csv"
    for row in read_rows(path):
        if row[anatomy.CONTRAST] == contrast:
            return tuple(number(row[k]) for k in (anatomy.DIFFERENCE, anatomy.DIFFERENCE_LOW,  # type: ignore[return-value]
                                                  anatomy.DIFFERENCE_HIGH))
    return None


def _ablation_finding(root: Path, claim: str, study: str, wanted: Sequence[str],
                      difference: Callable[[dict[str, float]], float], queries: str,
                      contrast: str | None = None) -> Finding:
    """A claim decided by the paired interval of its contrast where the ablation wrote one, else a direction from
    the gap between means; not measured when a variant it needs was not run."""
    path = root / layout.ABLATIONS / layout.KEEP / f"{anatomy.ABLATION}.csv"
    means = ablation_means(root)
    if not means:
        return missing(claim, study, path, root)
    absent = [v for v in wanted if v not in means]
    if absent:
        return Finding(claim, study, f"not run: add {', '.join(absent)} to ablation.variants", NOT_MEASURED)
    shown = ", ".join(f"{v} {means[v]:.4f}" for v in wanted)
    paired = ablation_contrast(root, contrast) if contrast else None
    if paired is not None:
        gap, low, high = paired
        return Finding(claim, study, f"nDCG@10 {shown} (paired difference {gap:+.4f} [{low:+.4f}, {high:+.4f}], "
                                     f"{queries})", interval_verdict(low, high))
    gap = difference(means)
    return Finding(claim, study, f"nDCG@10 {shown} (gap {gap:+.4f}, {queries})", gap_verdict(gap))


def mha_beats_mlp(root: Path, queries: str) -> Finding:
    """000 Table 3: keeping only the attention (MHA) update beats keeping only the MLP update."""
    study = quoted([TABLE_000_3["MHA updates only"], TABLE_000_3["MLP updates only"]], "NDCG")
    return _ablation_finding(root, "000 Table 3: MHA-only updates beat MLP-only updates", study,
                             ("attn-only", "mlp-only"), lambda m: m["attn-only"] - m["mlp-only"], queries,
                             anatomy.MHA_OVER_MLP)


def both_best(root: Path, queries: str) -> Finding:
    """000 Table 3: both updates together beat either alone."""
    study = quoted([TABLE_000_3["Both MLP & MHA updates"], TABLE_000_3["MHA updates only"]], "NDCG")
    return _ablation_finding(root, "000 Table 3: MHA and MLP updates together are best", study,
                             ("all", "attn-only", "mlp-only"),
                             lambda m: m["all"] - max(m["attn-only"], m["mlp-only"]), queries)


def up_gate_beats_down(root: Path, queries: str, mlp_only: bool = False) -> Finding:
    """000 Section 2 and Table 4: the up and gate projections matter more than the down projection. Table 4 ablates
    MLP-only-trained models: an adapter trained on every projection is not its setting, and the row says so."""
    study = (f"{WORDS['000 projections']}; " + quoted([TABLE_000_4["All Layers Up & gate_proj"],
                                                      TABLE_000_4["All Layers"]], "LLaMA") + " (MLP-only-trained)")
    found = _ablation_finding(root, "000: the up and gate projections matter more than the down projection", study,
                              ("up+gate", "down"), lambda m: m["up+gate"] - m["down"], queries,
                              anatomy.UP_GATE_OVER_DOWN)
    if mlp_only or found.verdict == NOT_MEASURED:
        return found
    return Finding(found.claim, found.study, f"{found.ours}; trained on every projection, not MLP-only",
                   NOT_SETTING)


def early_gain(root: Path) -> Finding:
    """000 Table 1: most of the nDCG@10 gain is there by the middle checkpoint, the rest comes before the last."""
    claim = "000 Table 1: most of the gain by the middle checkpoints, converged by the last"
    steps = ("5", "10", "100", "300")
    study = (f"{WORDS['000 convergence']} 000 Table 1, LLaMA3 NDCG@10 at steps {', '.join(steps)}: "
             + ", ".join(column(TABLE_000_1[s], "LLaMA3 NDCG@10") for s in steps))
    path = root / layout.CHECKPOINTS / f"{anatomy.CHECKPOINTS}.csv"
    table = sorted(((int(r["step"]), number(r[anatomy.NDCG]), r.get("converged", "")) for r in read_rows(path)))
    if not table:
        return missing(claim, study, path, root)
    first, last = table[0], table[-1]
    inside = table[1:-1]
    if not inside:
        return Finding(claim, study, f"{len(table)} checkpoints: none between the first and the last", NOT_MEASURED)
    middle = min(inside, key=lambda t: abs(t[0] - last[0] / 2))  # the checkpoint nearest half the last step
    before, after = middle[1] - first[1], last[1] - middle[1]
    converged = next((str(t[0]) for t in table if t[2]), "?")
    ours = (f"nDCG@10 step {first[0]} {first[1]:.4f}, step {middle[0]} {middle[1]:.4f}, step {last[0]} "
            f"{last[1]:.4f}: gain {before:+.4f} by the middle, {after:+.4f} after, {_count(dev_queries(root))}; "
            f"converged at step {converged}")
    if before + after < GAP:  # no gain to apportion: when it came cannot be told
        return Finding(claim, study, ours, WEAK)
    return Finding(claim, study, ours, gap_verdict(before - after))


# -- 001: gradients, probes, attention ------------------------------------------------------------------

def early_gradients(root: Path) -> Finding:
    """001 Part 3: the LoRA gradient norm lies in the early layers (late/early far below 1)."""
    claim = "001 Part 3: gradient norms concentrate in the early layers"
    study = str(WORDS["001 grad groups"])
    path = root / layout.REPRESENTATIONS / layout.DYNAMICS / dynamics.SUMMARY
    grads = read_json(path).get("grad_norms", {})
    grads = grads if isinstance(grads, dict) else {}
    as_001 = grads.get(dynamics.PER_TENSOR)  # 001's numbers are its code's: the mean of tensor norms, its groups
    definition = "mean of tensor norms, 001's groups" if isinstance(as_001, dict) else "root of summed squares, thirds"
    groups = (as_001 if isinstance(as_001, dict) else grads).get("mean_by_group", {})
    ratio = number(groups.get("late/early"))
    if math.isnan(ratio):
        return missing(claim, study, path, root) if not path.is_file() else \
            Finding(claim, study, "no late/early gradient norm in the dynamics summary", NOT_MEASURED)
    ours = (f"mean gradient norm ({definition}) early {number(groups.get('early')):.3g}, middle "
            f"{number(groups.get('middle')):.3g}, late {number(groups.get('late')):.3g}: late/early {ratio:.3g}")
    verdict = AGREES if ratio <= GRAD_AGREES else DISAGREES if ratio >= GRAD_DISAGREES else WEAK
    return Finding(claim, study, ours, verdict)


def probe_change(row: dict[str, str]) -> str:
    """'rises', 'falls' or 'same': whether the fine-tuned accuracy ± its fold std clears the base one ± its std."""
    base, tuned = number(row[probe.BASE_ACCURACY]), number(row[probe.TUNED_ACCURACY])
    base_std, tuned_std = number(row.get(f"{probe.BASE} std")), number(row.get(f"{probe.TUNED} std"))
    if tuned - tuned_std > base + base_std:
        return "rises"
    return "falls" if tuned + tuned_std < base - base_std else "same"


def late_probes(root: Path) -> Finding:
    """001 Part 4: after training the later layers' states become linearly separable, the early ones' do not."""
    claim = "001 Part 4: after training the later layers become linearly separable, the early ones do not"
    study = str(WORDS["001 probe"])
    path = root / layout.REPRESENTATIONS / layout.PROBE / f"{probe.PROBE}.csv"
    rows = [r for r in read_rows(path) if probe.TUNED_ACCURACY in r]
    if not rows:
        return missing(claim, study, path, root)
    deepest = max(int(r[probe.LAYER]) for r in rows)
    early = [r for r in rows if int(r[probe.LAYER]) < deepest / 2]
    late = [r for r in rows if int(r[probe.LAYER]) >= deepest / 2]
    ours = "; ".join(f"layer {r[probe.LAYER]}: {number(r[probe.BASE_ACCURACY]):.3f} -> "
                     f"{number(r[probe.TUNED_ACCURACY]):.3f} ({probe_change(r)})" for r in rows)
    if not early or not late:
        return Finding(claim, study, ours + " (needs layers in both halves)", NOT_MEASURED)
    if any(probe_change(r) == "rises" for r in early) or any(probe_change(r) == "falls" for r in late):
        return Finding(claim, study, ours, DISAGREES)
    return Finding(claim, study, ours, AGREES if all(probe_change(r) == "rises" for r in late) else WEAK)


def attention_means(folder: Path) -> list[tuple[int, float, float]]:
    """(layer, base, fine-tuned) mean document -> query mass: full precision from attention.npz, else the CSV."""
    npz = folder / f"{attention.ATTENTION}.npz"
    if npz.is_file():
        with np.load(npz) as saved:
            if "fine_tuned" in saved:
                return [(int(layer), float(b.mean()), float(t.mean()))
                        for layer, b, t in zip(saved["layers"], saved["base"], saved["fine_tuned"])]
    rows = read_rows(folder / f"{attention.ATTENTION}.csv")
    return [(int(r[LAYER]), number(r[attention.BASE_MEAN]), number(r[attention.TUNED_MEAN]))
            for r in rows if attention.TUNED_MEAN in r]


def attention_unchanged(root: Path) -> Finding:
    """001 Part 4: training left the document -> query attention unchanged (0.0% at every layer)."""
    claim = "001 Part 4: training leaves document -> query attention unchanged"
    study = str(WORDS["001 attention"])
    folder = root / layout.REPRESENTATIONS / layout.ATTENTION
    means = attention_means(folder)
    if not means:
        return missing(claim, study, folder / f"{attention.ATTENTION}.csv", root)
    if all(base <= 0 for _, base, _ in means):
        return Finding(claim, study, "no document -> query attention to compare (the document precedes the query "
                       "under the causal mask)", NOT_MEASURED)
    changes = [(layer, (tuned - base) / base) for layer, base, tuned in means if base > 0]
    largest = max(abs(c) for _, c in changes)
    ours = "relative change per layer: " + ", ".join(f"layer {layer} {c:+.1%}" for layer, c in changes)
    verdict = AGREES if largest < ATTENTION_SAME else DISAGREES if largest >= ATTENTION_CHANGED else WEAK
    return Finding(claim, study, ours, verdict)


# -- 002: stages and heads ------------------------------------------------------------------------------

def stage_profile(rows: list[dict[str, str]], group: str) -> tuple[float, bool, str]:
    """A position group's centre layer (mean layer weighted by positive mean IE), whether its peak IE's 95%
    interval clears zero, and a short description."""
    picked = [(int(r[patching_job.LAYER]), number(r[patching_job.MEAN_IE]), number(r[patching_job.STD]),
               number(r[patching_job.PAIRS])) for r in rows if r[patching_job.POSITIONS] == group]
    weights = [max(ie, 0.0) for _, ie, _, _ in picked]
    centre = sum(w * layer for w, (layer, *_) in zip(weights, picked)) / sum(weights) if sum(weights) else math.nan
    layer, ie, std, pairs = max(picked, key=lambda p: p[1])
    half = Z95 * std / math.sqrt(pairs) if pairs > 0 else math.inf
    where = f"centre layer {centre:.1f}" if sum(weights) else "no positive IE"
    return centre, ie - half > 0, f"{group} {where} (peak IE {ie:.2f} ± {half:.2f} at layer {layer})"


def three_stages(root: Path) -> Finding:
    """002: document positions matter early, the instruction's in the middle, the last token's late."""
    claim = "002: three stages: document positions early, instruction middle, last token late"
    study = words(*(WORDS[f"002 {s}"] for s in ("early", "middle", "late")))
    path = root / layout.PATCHING / layout.TUNED / patching_job.IE_MEAN
    rows = [r for r in read_rows(path) if r[patching_job.COMPONENT] == STAGE_COMPONENT]
    if not rows:
        return missing(claim, study, path, root)
    absent = [g for g in STAGE_GROUPS if all(r[patching_job.POSITIONS] != g for r in rows)]
    if absent:
        return Finding(claim, study, f"position group {', '.join(absent)} not patched", NOT_MEASURED)
    profiles = [stage_profile(rows, g) for g in STAGE_GROUPS]
    ours = f"fine-tuned, {STAGE_COMPONENT}: " + "; ".join(p[2] for p in profiles)
    if not all(p[1] for p in profiles):
        return Finding(claim, study, ours, WEAK)
    centres = [p[0] for p in profiles]
    return Finding(claim, study, ours, AGREES if centres[0] < centres[1] < centres[2] else DISAGREES)


def knockout_intervals(rows: list[dict[str, str]], metric: str) -> dict[str, tuple[float, float, float]]:
    """(change, CI low, CI high) of each knocked-out head set with a defined change of `metric`."""
    out = {}
    for r in rows:
        values = tuple(number(r.get(f"{metric} {k}")) for k in (ko.CHANGE, ko.CI_LOW, ko.CI_HIGH))
        if r[ko.HEAD_SET] != ko.FULL_MODEL and not any(math.isnan(v) for v in values):
            out[r[ko.HEAD_SET]] = values
    return out


def head_set(sets: dict[str, tuple[float, float, float]], label: str) -> list[str]:
    """The names of the sets of one of 002's kinds ('Doc', 'Last', 'Random', ...)."""
    return [name for name in sets if name.startswith(f"{label}-")]


def _knockout_quote(metric: str, labels: Sequence[str]) -> str:
    return quoted([TABLE_002_1["Full model"], *(TABLE_002_1[f"- {label}"] for label in labels)], STUDY_METRIC[metric])


def last_costs_most(root: Path, metric: str) -> Finding:
    """002 Table 1: knocking out the Last-N heads costs more than any other set of N heads or the random heads."""
    claim = f"002 Table 1: knocking out the Last-N heads costs most ({metric})"
    study = _knockout_quote(metric, ("Last-20", "Inst-20", "Query-20", "Doc-20", "Random-80"))
    path = root / layout.HEADS / layout.KNOCKOUT / f"{ko.KNOCKOUT}.csv"
    rows = read_rows(path)
    if not rows:
        return missing(claim, study, path, root)
    sets = knockout_intervals(rows, metric)
    last = head_set(sets, ko.HEAD_SET_GROUPS["last"])
    others = [n for g, label in ko.HEAD_SET_GROUPS.items() if g != "last" for n in head_set(sets, label)]
    others += head_set(sets, "Random")
    if not last or not others:
        return Finding(claim, study, f"no Last-N set or nothing to compare it with on {metric}", NOT_MEASURED)
    ours = "; ".join(f"{n} {percent(*sets[n])}" for n in (*last, *others))
    lo, hi = sets[last[0]][1:]
    if all(hi < sets[n][1] for n in others):
        return Finding(claim, study, ours, AGREES)
    return Finding(claim, study, ours, DISAGREES if any(sets[n][2] < lo for n in others) else WEAK)


def doc_costs_like_random(root: Path, metric: str) -> Finding:
    """002 Table 1: knocking out the Doc-N heads costs what knocking out random heads costs."""
    claim = f"002 Table 1: the Doc-N heads cost what random heads cost ({metric})"
    study = _knockout_quote(metric, ("Doc-20", "Random-80"))
    path = root / layout.HEADS / layout.KNOCKOUT / f"{ko.KNOCKOUT}.csv"
    rows = read_rows(path)
    if not rows:
        return missing(claim, study, path, root)
    sets = knockout_intervals(rows, metric)
    doc, randoms = head_set(sets, ko.HEAD_SET_GROUPS["document"]), head_set(sets, "Random")
    if not doc or not randoms:
        return Finding(claim, study, f"no Doc-N or Random set with a defined {metric} change", NOT_MEASURED)
    ours = "; ".join(f"{n} {percent(*sets[n])}" for n in (*doc, *randoms))
    interval = sets[doc[0]][1:]
    overlaps = [overlap(interval, sets[n][1:]) for n in randoms]
    if not any(overlaps):
        return Finding(claim, study, ours, DISAGREES)
    narrow = all(sets[n][2] - sets[n][1] <= NARROW for n in (*doc, *randoms))
    costly = [n for n in sets if n not in doc and n not in randoms
              and not any(overlap(sets[n][1:], sets[r][1:]) for r in randoms)]  # the metric can see a cost
    ours += "; apart from the random sets: " + (", ".join(costly) if costly else "none")
    return Finding(claim, study, ours, AGREES if all(overlaps) and narrow and costly else WEAK)


# -- the table ------------------------------------------------------------------------------------------

def dev_queries(root: Path) -> int | None:
    """How many dev queries the zero-shot stage and the checkpoint table scored (the dev run cut to
    dev.max_queries)."""
    count = read_json(root / layout.ZERO_SHOT / METRICS_FILE).get("queries")
    return count if isinstance(count, int) else None


def ablation_queries(root: Path, config: StudyConfig) -> int | None:
    """How many dev queries each ablation reranked: the dev run's first ablation.max_queries (all without); None
    when the outputs cannot tell (the run has more queries than dev.max_queries let the zero-shot stage see)."""
    seen, cut, cap = dev_queries(root), config.dev.max_queries, config.ablation.max_queries
    if seen is None:
        return None
    if cap is not None and cap <= seen:
        return cap
    whole_run = cut is None or seen < cut  # the zero-shot stage saw every query of the run
    return seen if whole_run else None


def _count(n: int | None) -> str:
    return f"{n if n is not None else '?'} dev queries"


def findings(root: Path, config: StudyConfig) -> list[Finding]:
    """Every claim the study measures, in the studies' order (000, 001, 002)."""
    queries = _count(ablation_queries(root, config))
    mlp_only = set(config.train.lora.targets) <= {"mlp", "gate", "up", "down"}
    return [mha_beats_mlp(root, queries), both_best(root, queries), up_gate_beats_down(root, queries, mlp_only),
            early_gain(root), early_gradients(root), late_probes(root), attention_unchanged(root), three_stages(root),
            *(last_costs_most(root, m) for m in (ko.F1, ko.NDCG10)),
            *(doc_costs_like_random(root, m) for m in (ko.F1, ko.NDCG10))]


CAPTION = ("Findings: each claim of the source studies that this study measures, the study's own words or numbers "
           "(quoted), ours, and a verdict: agrees, disagrees, too weak to tell, a direction where there is no "
           "interval, not the study's setting, or not measured (its stage output or ablation variant is missing); how "
           "each verdict is decided is listed under the table")


def rules(root: Path, config: StudyConfig) -> list[str]:
    """The verdict rules, one per kind of evidence, stated under the findings table."""
    return [
        f"000 ablations: the paired bootstrap 95% interval of the nDCG@10 difference over queries (ablations over "
        f"{_count(ablation_queries(root, config))}) agrees when wholly above zero, disagrees when wholly below. "
        f"Without one (both-together against the better single update; checkpoints over "
        f"{_count(dev_queries(root))}) means only: a gap under {GAP} is too weak to tell; a larger one gives a "
        "direction, not a verdict, since one query can move a mean over few queries by more. Table 4's projection "
        "claim on an adapter trained on every projection is not the study's setting (it ablates MLP-only-trained "
        "models). Checkpoints compare the gain up to the checkpoint "
        f"nearest half the last step with the gain after it, when the whole gain is at least {GAP}.",
        f"001 gradient norms: late/early mean norm at most {GRAD_AGREES} agrees, {GRAD_DISAGREES} or more disagrees.",
        "001 probes: a layer rises (falls) only when its fine-tuned accuracy ± fold std lies wholly above (below) the "
        "base accuracy ± std. Agrees when every layer of the later half rises and no earlier one does; disagrees "
        "when an earlier layer rises or a later one falls.",
        f"001 attention: unchanged (agrees) when every layer's relative change is under {ATTENTION_SAME:.0%}, changed "
        f"(disagrees) when one reaches {ATTENTION_CHANGED:.0%}.",
        f"002 stages: each group's peak mean IE needs its 95% interval (± {Z95} std / sqrt(pairs)) above zero; then "
        "agrees when the IE-weighted centre layers are ordered document < instruction < last.",
        "002 knockouts: 95% bootstrap intervals of the relative change. Last-N costs most when its interval lies "
        "wholly below every other set's (Doc, Query, Inst, Random; Mixed, their union, left out), disagrees when "
        "another set's lies wholly below it. Doc-N costs what random heads cost when its interval overlaps every "
        f"random set's, each is at most {NARROW:.2f} wide, and some other set's interval (Last-N, Mixed, ...) lies "
        "apart from the random ones (the metric can see a cost); disagrees when it overlaps none.",
        "Anything else is too weak to tell.",
    ]


def findings_rows(root: Path, config: StudyConfig) -> list[dict[str, str]]:
    """The findings table's rows."""
    return [f.row() for f in findings(root, config)]
