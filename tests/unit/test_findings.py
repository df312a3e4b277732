"""The report's findings table: each claim's verdict from small fake stage outputs (written with relscope's own
writers, in the writers' column names): agrees, disagrees and too weak to tell; a missing output is not measured;
and the report opens with the findings, then the contents, with raw listings linked as CSVs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from relscope.analysis import anatomy, attention, dynamics, probe
from relscope.analysis import knockout as ko
from relscope.analysis.patching import job as patching_job
from relscope.evaluation.job import METRICS_FILE
from relscope.reports.tables import to_csv, write_table
from relscope.study import findings, layout
from relscope.study.config import AblationSettings, StudyConfig
from relscope.study.findings import AGREES, DISAGREES, NOT_MEASURED, NOT_SETTING, OTHER_WAY, SAME_WAY, WEAK
from relscope.study.page import anchor, render_html, render_markdown
from relscope.study.report import sections
from relscope.study.sources import TABLE_000_3, TABLE_002_1
from relscope.training.config import TrainConfig

CONFIG = StudyConfig(name="fake", model="tiny", train=TrainConfig(train=("x",)),
                     ablation=AblationSettings(max_queries=5))


def _zero_shot(root: Path, queries: int = 8) -> None:
    (root / layout.ZERO_SHOT).mkdir(parents=True, exist_ok=True)
    metrics = {"model": "tiny", "template": "yes_no", "queries": queries, "top_k": 3, "passages_per_second": 9.0,
               "first_stage": {anatomy.NDCG: 0.4}, "reranked": {anatomy.NDCG: 0.3}}
    (root / layout.ZERO_SHOT / METRICS_FILE).write_text(json.dumps(metrics))


def _ablation(root: Path, means: dict[str, float]) -> None:
    folder = root / layout.ABLATIONS / layout.KEEP
    folder.mkdir(parents=True, exist_ok=True)
    write_table([{anatomy.KEPT_IN: v, "sites kept": "1/2", anatomy.NDCG: m} for v, m in means.items()],
                folder / anatomy.ABLATION, "fake: LoRA update kept only in")


def _grad_norms(root: Path, early: float, late: float) -> None:
    folder = root / layout.REPRESENTATIONS / layout.DYNAMICS
    folder.mkdir(parents=True, exist_ok=True)
    groups = {"early": early, "middle": (early + late) / 2, "late": late, "late/early": late / early}
    (folder / dynamics.SUMMARY).write_text(json.dumps({"grad_norms": {"mean_by_group": groups, "layer0_mean": early}}))


def _probe(root: Path, layers: dict[int, tuple[float, float, float, float]]) -> None:
    """layer -> (base accuracy, base std, fine-tuned accuracy, fine-tuned std)."""
    folder = root / layout.REPRESENTATIONS / layout.PROBE
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{probe.LAYER: layer, probe.BASE_ACCURACY: b, probe.TUNED_ACCURACY: t, f"{probe.BASE} std": bs,
             f"{probe.TUNED} std": ts} for layer, (b, bs, t, ts) in layers.items()]
    write_table(rows, folder / probe.PROBE, "fake: linear-probe accuracy per layer")


def _knockout(root: Path, sets: dict[str, tuple[float, float, float]]) -> None:
    """Head set -> (relative change, CI low, CI high), the same for every metric."""
    folder = root / layout.HEADS / layout.KNOCKOUT
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, values in {ko.FULL_MODEL: (0.0, 0.0, 0.0), **sets}.items():
        row = {ko.HEAD_SET: name, "heads": 2}
        for metric in (ko.F1, ko.PAIR_ACCURACY, ko.NDCG10):
            row.update({metric: 0.5, **{f"{metric} {k}": v for k, v in zip((ko.CHANGE, ko.CI_LOW, ko.CI_HIGH),
                                                                             values)}})
        rows.append(row)
    write_table(rows, folder / ko.KNOCKOUT, "fake: mean-ablation of head sets")


def _checkpoints(root: Path, ndcg: dict[int, float]) -> None:
    folder = root / layout.CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    write_table([{"step": s, anatomy.NDCG: v, "converged": "yes" if s == max(ndcg) else ""} for s, v in ndcg.items()],
                folder / anatomy.CHECKPOINTS, "fake: metrics by checkpoint")


def _attention(root: Path, base: list[float], tuned: list[float]) -> None:
    folder = root / layout.REPRESENTATIONS / layout.ATTENTION
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{findings.LAYER: i, attention.BASE_MEAN: b, attention.TUNED_MEAN: t}
            for i, (b, t) in enumerate(zip(base, tuned))]
    write_table(rows, folder / attention.ATTENTION, "fake: attention mass from document to query")


def _ie_mean(root: Path, ie: dict[str, list[float]], std: float = 0.1, pairs: int = 10) -> None:
    """Position group -> mean IE of the residual stream per layer."""
    folder = root / layout.PATCHING / layout.TUNED
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{patching_job.COMPONENT: findings.STAGE_COMPONENT, patching_job.LAYER: layer,
             patching_job.POSITIONS: group, patching_job.MEAN_IE: value, patching_job.STD: std,
             patching_job.PAIRS: pairs} for group, values in ie.items() for layer, value in enumerate(values)]
    (folder / patching_job.IE_MEAN).write_text(to_csv(rows))


def _queries(root: Path) -> str:
    return f"{findings.ablation_queries(root, CONFIG)} dev queries"


# -- 000 Table 3: MHA-only beats MLP-only ----------------------------------------------------------------

@pytest.mark.parametrize(("attn", "mlp", "verdict"), [(0.50, 0.40, SAME_WAY), (0.40, 0.50, OTHER_WAY),
                                                      (0.50, 0.48, WEAK)])
def test_mha_only_against_mlp_only(tmp_path, attn, mlp, verdict):
    _zero_shot(tmp_path)
    _ablation(tmp_path, {"attn-only": attn, "mlp-only": mlp})
    found = findings.mha_beats_mlp(tmp_path, _queries(tmp_path))
    assert found.verdict == verdict
    assert f"attn-only {attn:.4f}" in found.ours and "5 dev queries" in found.ours  # ablation.max_queries of 8
    assert TABLE_000_3["MHA updates only"].cells[1] in found.study  # the study's own LLaMA NDCG, quoted


@pytest.mark.parametrize(("shift", "noise", "verdict"), [(0.03, 0.01, AGREES), (-0.03, 0.01, DISAGREES),
                                                          (0.03, 0.3, WEAK)])
def test_a_contrast_with_a_paired_interval_gives_a_verdict_where_means_alone_could_not(tmp_path, shift, noise,
                                                                                         verdict):
    """The gap (0.03) is under GAP: means alone say too weak; 40 queries that all move the same way say more."""
    rng = np.random.default_rng(1)
    down = rng.uniform(0.3, 0.7, 40)
    up_gate = down + shift + rng.normal(0.0, noise, 40)
    per_query = {name: {f"q{i}": {anatomy.NDCG: float(v)} for i, v in enumerate(values)}
                 for name, values in (("up+gate", up_gate), ("down", down))}
    _ablation(tmp_path, {"up+gate": float(up_gate.mean()), "down": float(down.mean())})
    anatomy._write_contrasts(tmp_path / layout.ABLATIONS / layout.KEEP, per_query)
    found = findings.up_gate_beats_down(tmp_path, "40 dev queries", mlp_only=True)
    assert found.verdict == verdict and "paired difference" in found.ours
    assert findings.gap_verdict(float((up_gate - down).mean())) == WEAK  # what the means alone would say


@pytest.mark.parametrize(("every", "verdict"), [(0.60, SAME_WAY), (0.40, OTHER_WAY), (0.52, WEAK)])
def test_both_updates_together_against_the_best_alone(tmp_path, every, verdict):
    _ablation(tmp_path, {"attn-only": 0.50, "mlp-only": 0.45, "all": every})
    assert findings.both_best(tmp_path, "8 dev queries").verdict == verdict


def test_a_claim_whose_variant_or_stage_is_missing_is_not_measured(tmp_path):
    assert findings.mha_beats_mlp(tmp_path, "8 dev queries").verdict == NOT_MEASURED  # no ablation stage
    _ablation(tmp_path, {"attn-only": 0.50, "mlp-only": 0.40})
    found = findings.both_best(tmp_path, "8 dev queries")
    assert found.verdict == NOT_MEASURED and "all" in found.ours
    every = findings.findings(tmp_path / "nothing", CONFIG)
    assert {f.verdict for f in every} == {NOT_MEASURED} and len(every) == 12


@pytest.mark.parametrize(("seen", "dev_cut", "cap", "count"), [
    (8, None, 5, 5), (8, None, None, 8), (8, None, 20, 8),  # the zero-shot stage saw the whole run
    (8, 8, 5, 5), (8, 8, None, None), (8, 8, 20, None),  # it saw the first 8 of a run of unknown size
    (6, 8, None, 6),  # the run has only 6
])
def test_the_ablations_query_count(tmp_path, seen, dev_cut, cap, count):
    _zero_shot(tmp_path, seen)
    config = replace(CONFIG, dev=replace(CONFIG.dev, max_queries=dev_cut), ablation=AblationSettings(max_queries=cap))
    assert findings.ablation_queries(tmp_path, config) == count


def test_up_and_gate_against_down(tmp_path):
    _ablation(tmp_path, {"up+gate": 0.5, "down": 0.3})
    assert findings.up_gate_beats_down(tmp_path, "8 dev queries", mlp_only=True).verdict == SAME_WAY
    # Table 4 ablates MLP-only-trained models: an adapter trained on every projection is not its setting
    assert findings.up_gate_beats_down(tmp_path, "8 dev queries").verdict == NOT_SETTING


# -- 000 Table 1: the gain comes early ------------------------------------------------------------------

@pytest.mark.parametrize(("middle", "last", "verdict"), [
    (0.70, 0.75, SAME_WAY), (0.25, 0.75, OTHER_WAY), (0.47, 0.75, WEAK),
    (0.12, 0.12, WEAK),  # training lost: no gain whose timing could agree or disagree
])
def test_most_of_the_gain_by_the_middle_checkpoint(tmp_path, middle, last, verdict):
    _checkpoints(tmp_path, {0: 0.2, 5: 0.21, 100: middle, 300: last})  # 100: nearest half of 300
    found = findings.early_gain(tmp_path)
    assert found.verdict == verdict and "step 100" in found.ours and "converged at step 300" in found.ours


# -- 001 Part 3: gradient norms in the early layers -----------------------------------------------------

@pytest.mark.parametrize(("late", "verdict"), [(0.5, AGREES), (60.0, DISAGREES), (20.0, WEAK)])
def test_gradient_norms_in_the_early_layers(tmp_path, late, verdict):
    _grad_norms(tmp_path, early=50.0, late=late)
    found = findings.early_gradients(tmp_path)
    assert found.verdict == verdict and f"late/early {late / 50:.3g}" in found.ours


def test_a_run_without_gradient_norms_is_not_measured(tmp_path):
    folder = tmp_path / layout.REPRESENTATIONS / layout.DYNAMICS
    folder.mkdir(parents=True)
    (folder / dynamics.SUMMARY).write_text(json.dumps({"run": "x"}))
    assert findings.early_gradients(tmp_path).verdict == NOT_MEASURED


# -- 001 Part 4: probes ---------------------------------------------------------------------------------

FLAT = (0.50, 0.05, 0.50, 0.05)
RISE = (0.50, 0.05, 0.80, 0.05)


@pytest.mark.parametrize(("early", "late", "verdict"), [
    (FLAT, RISE, AGREES),  # the later layers separate, the early ones do not
    (RISE, RISE, DISAGREES),  # an early layer separates too
    (FLAT, (0.80, 0.05, 0.50, 0.05), DISAGREES),  # the later layers lose
    (FLAT, (0.50, 0.10, 0.60, 0.10), WEAK),  # a gain inside the folds' spread
])
def test_probes_separate_the_later_layers(tmp_path, early, late, verdict):
    _probe(tmp_path, {0: early, 1: early, 2: late, 3: late, 4: late})
    found = findings.late_probes(tmp_path)
    assert found.verdict == verdict and f"layer 4: {late[0]:.3f} -> {late[2]:.3f}" in found.ours


# -- 001 Part 4: attention ------------------------------------------------------------------------------

@pytest.mark.parametrize(("tuned", "verdict"), [(0.2005, AGREES), (0.25, DISAGREES), (0.204, WEAK)])
def test_document_to_query_attention_unchanged(tmp_path, tuned, verdict):
    _attention(tmp_path, [0.2, 0.2], [0.2, tuned])
    assert findings.attention_unchanged(tmp_path).verdict == verdict


def test_attention_reads_full_precision_from_the_arrays(tmp_path):
    _attention(tmp_path, [0.002], [0.002])  # the CSV's four decimals hide a 20% change
    folder = tmp_path / layout.REPRESENTATIONS / layout.ATTENTION
    np.savez(folder / f"{attention.ATTENTION}.npz", layers=np.array([0]), base=np.full((1, 4), 0.0020),
             fine_tuned=np.full((1, 4), 0.0024))
    assert findings.attention_unchanged(tmp_path).verdict == DISAGREES


def test_no_document_to_query_attention_is_not_measured(tmp_path):
    _attention(tmp_path, [0.0, 0.0], [0.0, 0.0])  # the document before the query: the causal mask hides it
    assert findings.attention_unchanged(tmp_path).verdict == NOT_MEASURED


# -- 002: three stages ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("ie", "std", "verdict"), [
    ({"document": [0.9, 0.3, 0.0, 0.0], "instruction": [0.0, 0.6, 0.5, 0.0], "last": [0.0, 0.0, 0.4, 0.9]}, 0.1,
     AGREES),
    ({"document": [0.0, 0.0, 0.4, 0.9], "instruction": [0.0, 0.6, 0.5, 0.0], "last": [0.9, 0.3, 0.0, 0.0]}, 0.1,
     DISAGREES),
    ({"document": [0.9, 0.3, 0.0, 0.0], "instruction": [0.0, 0.05, 0.0, 0.0], "last": [0.0, 0.0, 0.4, 0.9]}, 0.3,
     WEAK),  # the instruction's peak is within its noise
])
def test_three_stages_of_patching(tmp_path, ie, std, verdict):
    _ie_mean(tmp_path, ie, std)
    assert findings.three_stages(tmp_path).verdict == verdict


# -- 002 Table 1: knockouts -----------------------------------------------------------------------------

AGREEING = {"Doc-2": (-0.01, -0.03, 0.01), "Inst-2": (-0.10, -0.15, -0.05), "Last-2": (-0.40, -0.50, -0.30),
            "Mixed-6": (-0.50, -0.60, -0.40), "Random-6 #1": (-0.01, -0.03, 0.01)}
DISAGREEING = {"Doc-2": (-0.40, -0.50, -0.30), "Inst-2": (-0.10, -0.15, -0.05), "Last-2": (-0.01, -0.03, 0.01),
               "Mixed-6": (-0.50, -0.60, -0.40), "Random-6 #1": (-0.01, -0.03, 0.01)}
DEAF = {"Doc-2": (0.0, 0.0, 0.0), "Last-2": (0.0, 0.0, 0.0), "Random-4 #1": (0.0, 0.0, 0.0)}  # nothing moves F1
WEAKLY = {"Doc-2": (-0.05, -0.25, 0.10), "Last-2": (-0.10, -0.30, 0.05), "Mixed-4": (-0.50, -0.60, -0.40),
          "Random-4 #1": (-0.02, -0.20, 0.10), "Random-4 #2": (-0.03, -0.20, 0.10)}


@pytest.mark.parametrize(("sets", "verdict"), [(AGREEING, AGREES), (DISAGREEING, DISAGREES), (WEAKLY, WEAK)])
def test_the_last_heads_cost_most(tmp_path, sets, verdict):
    _knockout(tmp_path, sets)
    for metric in (ko.F1, ko.NDCG10):
        found = findings.last_costs_most(tmp_path, metric)
        assert found.verdict == verdict, metric
        assert "Mixed" not in found.ours  # their union is no rival of its parts
    assert TABLE_002_1["- Last-20"].cells[0] in findings.last_costs_most(tmp_path, ko.F1).study


@pytest.mark.parametrize(("sets", "verdict"), [(AGREEING, AGREES), (DISAGREEING, DISAGREES), (WEAKLY, WEAK),
                                               (DEAF, WEAK)])  # equal, but on a metric no knockout moves
def test_the_document_heads_cost_what_random_heads_cost(tmp_path, sets, verdict):
    _knockout(tmp_path, sets)
    found = findings.doc_costs_like_random(tmp_path, ko.NDCG10)
    assert found.verdict == verdict and "Doc-2" in found.ours and "%" in found.ours


def test_an_undefined_change_is_left_out_of_the_knockout_verdicts(tmp_path):
    _knockout(tmp_path, {"Last-2": (float("nan"),) * 3, "Doc-2": (-0.01, -0.04, 0.02)})
    assert findings.last_costs_most(tmp_path, ko.F1).verdict == NOT_MEASURED


# -- the report -----------------------------------------------------------------------------------------

def _fake_study(root: Path) -> None:
    _zero_shot(root)
    _ablation(root, {"attn-only": 0.50, "mlp-only": 0.40, "all": 0.60})
    _grad_norms(root, 50.0, 0.5)
    _probe(root, {0: FLAT, 1: FLAT, 2: RISE})
    _knockout(root, AGREEING)


def test_the_report_opens_with_the_findings_then_the_contents(tmp_path):
    _fake_study(tmp_path)
    parts = sections(tmp_path, CONFIG)
    md, page = render_markdown(parts, tmp_path), render_html(parts, tmp_path)
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## Findings", "## Contents", "## Overview"]
    contents = md.split("## Contents")[1].split("## Overview")[0]
    assert all(f"- {s.title}" in contents for s in parts[1:])
    findings_part = md.split("## Findings")[1].split("## Contents")[0]
    assert "| claim |" in findings_part and "too weak to tell" in findings_part  # the rules, under the table
    assert "000 Table 3: MHA-only updates beat MLP-only updates | 000 Table 3" in findings_part
    h2 = page.split("<h2")[1:]
    assert h2[0].startswith(" id=findings>") and h2[1].startswith(" id=contents>")
    for section in parts[1:]:  # every entry of the contents links to its section
        assert f'href="#{anchor(section.title)}"' in h2[1]
        assert f"<h2 id={anchor(section.title)}>" in page


def test_raw_listings_are_linked_not_shown(tmp_path):
    _fake_study(tmp_path)
    every_head = tmp_path / layout.HEADS / layout.HEAD_ANALYSIS
    every_head.mkdir(parents=True)
    write_table([{"layer": i // 4, "head": i % 4, "interaction": 0.1} for i in range(16)], every_head / "heads",
                "Every head: interaction score")
    md = render_markdown(sections(tmp_path, CONFIG), tmp_path)
    assert "Knockout: top-IE vs random" in md  # the curated verdict table stays
    assert f"{ko.F1} {ko.CI_LOW}" not in md  # the 14-column table does not
    assert "[heads/knockout/knockout.csv](heads/knockout/knockout.csv)" in md
    assert "[heads/heads/heads.csv](heads/heads/heads.csv)" in md and "| 3 | 3 | 0.1" not in md
