"""The study report: every table and figure of a `relscope study` folder, each captioned in one line, the
source studies' findings beside ours, as report.md and as one self-contained report.html (figures embedded).

It opens with the findings (relscope.study.findings: each claim of the source studies, quoted, beside ours, with a
verdict and its rule), then a table of contents, then one section per stage. Raw listings (per head, per site, per
module, the full knockout table) are linked as their CSVs instead of shown.

The report reads only the files the stages wrote. A file that is missing shows up as a visible
"not produced" line, never as a broken image.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relscope.analysis import anatomy, attention, compare, dynamics, probe
from relscope.analysis import heads as head_analysis
from relscope.analysis import knockout as ko
from relscope.analysis.patching import job as patching_job
from relscope.analysis.patching.circuit import CIRCUIT, FAITHFULNESS
from relscope.errors import DataError
from relscope.evaluation.job import METRICS_FILE
from relscope.io import atomic_write_text
from relscope.manifest import MANIFEST_FILE
from relscope.study import findings, layout
from relscope.study.page import FINDINGS, Figure, Link, Missing, Section, Table, render_html, render_markdown
from relscope.study.sources import SOURCE, STUDIES
from relscope.training.job import SUMMARY_FILE

if TYPE_CHECKING:
    from relscope.study.config import StudyConfig

MAX_ROWS = 30  # longer tables are cut in the report (the CSV beside it has them all)
SHORT_ROWS = 10  # listings (per head, per site) show their first rows and link the CSV
LISTING_ROWS, LISTING_COLUMNS = 12, 8  # a leftover table longer or wider than this is linked, not shown


# -- reading stage outputs -------------------------------------------------------------------------------

def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV a stage wrote, each a dict of strings by column."""
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def table_item(stem: Path, caption: str | None = None, limit: int = MAX_ROWS,
               columns: list[str] | None = None) -> Table | Missing:
    """The table written by `write_table(rows, stem, title)`; its title line is the caption unless one is given."""
    path = stem.with_suffix(".csv")
    if not path.is_file():
        return Missing(path)
    rows = read_csv(path)
    if columns:
        rows = [{c: r[c] for c in columns if c in r} for r in rows]
    caption = table_title(stem) if caption is None else caption
    cut = len(rows) > limit
    return Table(caption + (f" (first {limit} of {len(rows)} rows)" if cut else ""), rows[:limit],
                 str(path) if cut else "", path)


def table_title(stem: Path) -> str:
    """The title line `write_table` put above the table in stem.md (the file's name without one)."""
    md = stem.with_suffix(".md")
    first = md.read_text(encoding="utf-8").splitlines()[0] if md.is_file() else stem.name
    return first.lstrip("# ").strip()


def link_item(table: Table | Missing, what: str) -> Link | Missing:
    """A link to the CSV of a table too long or wide for the page, saying what it holds and how big it is."""
    if not isinstance(table, Table) or table.csv is None:
        return table
    rows = read_csv(table.csv)
    size = f"{len(rows)} rows × {len(rows[0]) if rows else 0} columns"
    return Link(f"{what} ({size})", table.csv)


def figure_item(path: Path, caption: str) -> Figure | Missing:
    """The figure at `path` with its caption, or a visible gap when the stage did not produce it."""
    return Figure(caption, path) if path.is_file() else Missing(path)


def read_json(path: Path) -> dict:
    """A stage's JSON output ({} when absent); a damaged one is one error naming it and the stage to redo."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        raise DataError(f"{path}: damaged (not a JSON object); redo the stage that wrote it with "
                        "`relscope study CONFIG --out ... --force STAGE`")
    return data


# -- sections --------------------------------------------------------------------------------------------

def findings_section(root: Path, config: StudyConfig) -> Section:
    """What a reader came for: each claim of the source studies beside ours, with a verdict and its rule."""
    return Section(FINDINGS, "", [Table(findings.CAPTION, findings.findings_rows(root, config),
                                        notes=findings.rules(root, config))])


def overview(root: Path, config: StudyConfig) -> Section:
    """What was studied, on what, and each stage's time and memory (the study's manifest)."""
    manifest = read_json(root / MANIFEST_FILE)
    stages = manifest.get("stages", {})
    rows = [{"stage": name, "status": s.get("status", ""), "minutes": f"{s.get('seconds', 0) / 60:.2f}",
             "peak RSS (MiB)": f"{s.get('peak_rss_mib', 0):.0f}",
             **({"peak CUDA (MiB)": f"{s['peak_cuda_mib']:.0f}"} if "peak_cuda_mib" in s else {})}
            for name, s in stages.items()]
    total = sum(s.get("seconds", 0) for s in stages.values()) / 60
    budget = config.budget_minutes
    verdict = "" if budget is None else (f"; budget {budget:g} min: " + ("kept" if total <= budget else "EXCEEDED"))
    intro = (f"Study `{config.name}` on `{config.model}`: {config.train.objective} LoRA training "
             f"(rank {config.train.lora.rank}, {config.train.max_steps} steps), evaluated on `{config.dev.data}` "
             f"BM25 top-{config.dev.top_k}. Stage time summed over the runs that produced these outputs: "
             f"{total:.1f} min{verdict}. Sources: " + "; ".join(STUDIES.values()) + ".")
    items = [Table("Each stage's wall time and peak memory (from manifest.json; skipped = reused from an earlier "
                   "run)", rows)] if rows else []
    return Section("Overview", intro, items)


def zero_shot(root: Path) -> Section:
    """The untrained judge against the first stage: the baseline training must beat."""
    metrics = read_json(root / layout.ZERO_SHOT / METRICS_FILE)
    if not metrics:
        return Section("Zero-shot baseline", items=[Missing(root / layout.ZERO_SHOT / METRICS_FILE)])
    rows = [{"system": "BM25 (first stage)", **metrics["first_stage"]},
            {"system": f"{metrics['model']} zero-shot {metrics['template']}", **metrics["reranked"]}]
    rows[0]["source"] = SOURCE[("zero-shot", "BM25 nDCG@10")]
    rows[1]["source"] = ""
    return Section("Zero-shot baseline", f"{metrics['queries']} queries, top-{metrics['top_k']} reranked, "
                   f"{metrics['passages_per_second']} passages/s.",
                   [Table("The untrained judge against BM25 on the dev run (source: published BM25 nDCG@10)", rows)])


def training(root: Path) -> Section:
    """The LoRA run: its loss and accuracy curves and the dev metrics at every checkpoint."""
    summary, folder = read_json(root / layout.TRAIN / SUMMARY_FILE), root / layout.REPRESENTATIONS / layout.DYNAMICS
    intro = (f"{summary.get('steps', '?')} steps, final training loss {summary.get('train_loss', float('nan')):.4f}, "
             f"{summary.get('trainable_parameters', '?')} trainable parameters, "
             f"{summary.get('seconds_this_session', 0) / 60:.1f} min.") if summary else ""
    checkpoints = table_item(root / layout.CHECKPOINTS / anatomy.CHECKPOINTS,
                             "Dev metrics at every checkpoint (step 0: the zero-shot judge); source: "
                             + SOURCE[("checkpoints", "convergence")])
    return Section("LoRA training", intro, [
        figure_item(folder / dynamics.CURVES_FIGURE,
                    "Training loss (smoothed) and accuracy by step, the steepest drop marked"),
        checkpoints,
        figure_item(root / layout.CHECKPOINTS / f"{anatomy.CHECKPOINTS}.png", "Dev metrics by checkpoint"),
    ])


def ablations(root: Path) -> Section:
    """Where the LoRA update matters: dev metrics with it kept only in some modules or layers, and its ΔW stats."""
    keep = table_item(root / layout.ABLATIONS / layout.KEEP / anatomy.ABLATION)
    if isinstance(keep, Table):
        for row in keep.rows:
            row["source study"] = SOURCE.get(("ablations", row[anatomy.KEPT_IN]), "")
    stats = root / layout.ABLATIONS / layout.STATS
    return Section("LoRA anatomy", "", [
        keep,
        figure_item(root / layout.ABLATIONS / layout.KEEP / f"{anatomy.ABLATION}.png",
                    "Dev nDCG@10 with the LoRA update kept only in "
                    "some modules or layers (the rest scaled to zero)"),
        module_means(stats / f"{anatomy.DELTA_STATS}.csv"),
        figure_item(stats / f"{anatomy.DELTA_STATS}.png", "Frobenius norm of each layer's ΔW = BA·α/r, by module"),
        figure_item(stats / anatomy.EFFECTIVE_RANK_FIGURE,
                    "Effective rank of each ΔW (exp of the singular-value entropy)"),
    ])


def module_means(path: Path) -> Table | Missing:
    """Mean ‖ΔW‖ and effective rank per projection over layers."""
    if not path.is_file():
        return Missing(path)
    rows = read_csv(path)
    modules = list(dict.fromkeys(r[anatomy.MODULE] for r in rows))
    out = []
    for module in modules:
        picked = [r for r in rows if r[anatomy.MODULE] == module]
        mean = {key: sum(float(r[key]) for r in picked) / len(picked) for key in (anatomy.FROBENIUS,
                                                                                  anatomy.EFFECTIVE_RANK)}
        out.append({"module": module, "mean ‖ΔW‖_F": mean[anatomy.FROBENIUS],
                    "mean effective rank": mean[anatomy.EFFECTIVE_RANK]})
    return Table("ΔW per projection, mean over layers (000 reports up and gate as the most impactful when ablated; "
                 "it gives no ΔW sizes)", out)


def representations(root: Path) -> Section:
    """Training dynamics, attention changes and linear probes, beside the source study's findings."""
    folder = root / layout.REPRESENTATIONS
    return Section("Training dynamics and representations", "", [
        side_by_side_dynamics(folder),
        figure_item(folder / layout.DYNAMICS / dynamics.GRAD_NORMS_FIGURE,
                    "LoRA gradient norm per layer at every step"),
        figure_item(folder / layout.DYNAMICS / dynamics.GROUPS_FIGURE,
                    "Mean gradient norm of the early, middle and late thirds"),
        table_item(folder / layout.ATTENTION / attention.ATTENTION),
        figure_item(folder / layout.ATTENTION / attention.CHANGE_FIGURE,
                    "Change of document → query attention mass per head (fine-tuned − base)"),
        table_item(folder / layout.PROBE / probe.PROBE),
        figure_item(folder / layout.PROBE / f"{probe.PROBE}.png",
                    "Linear-probe accuracy (relevant vs not) per layer, base and "
                    "fine-tuned, cross-validated by query"),
        figure_item(folder / layout.PROBE / probe.PCA_TUNED_FIGURE, "PCA of the fine-tuned model's last-token states"),
    ])


def side_by_side_dynamics(folder: Path) -> Table:
    """Our gradient norms, loss cliff and probe accuracies beside the source study's numbers."""
    summary = read_json(folder / layout.DYNAMICS / dynamics.SUMMARY)
    rows = []
    grads = summary.get("grad_norms", {})
    groups = grads.get("mean_by_group", {})
    as_001 = grads.get(dynamics.PER_TENSOR)  # 001 prints its code's per-tensor mean over its own layer groups
    if isinstance(as_001, dict) and "layer0_mean" in as_001:
        late = as_001.get("mean_by_group", {})
        rows.append({"quantity": "LoRA gradient norm (mean of tensor norms, 001's code), layer 0 vs late",
                     "source": SOURCE[("representations", "grad norm layer 0 vs late")],
                     "ours": f"{as_001['layer0_mean']:.3g} vs {late.get('late', float('nan')):.3g} "
                             f"(late/early {late.get('late/early', float('nan')):.2f})"})
    elif "layer0_mean" in grads:
        rows.append({"quantity": "LoRA gradient norm (root of summed squares), layer 0 vs late third",
                     "source": SOURCE[("representations", "grad norm layer 0 vs late")],
                     "ours": f"{grads['layer0_mean']:.3g} vs {groups.get('late', float('nan')):.3g} "
                             f"(late/early {groups.get('late/early', float('nan')):.2f})"})
    cliff = summary.get("phase_transition")
    if cliff:
        rows.append({"quantity": "loss cliff", "source": SOURCE[("representations", "cliff")],
                     "ours": f"steps {cliff['start_step']}-{cliff['end_step']}: {cliff['loss_before']:.3f} -> "
                             f"{cliff['loss_after']:.3f}"})
    probe_csv = folder / layout.PROBE / f"{probe.PROBE}.csv"
    probes = read_csv(probe_csv) if probe_csv.is_file() else []
    if probes and probe.TUNED_ACCURACY in probes[0]:  # 001 gives each layer before -> after training: so do we
        rows.append({"quantity": "probe accuracy, before -> after training",
                     "source": SOURCE[("representations", "probe")],
                     "ours": "; ".join(f"layer {r[probe.LAYER]}: {float(r[probe.BASE_ACCURACY]):.3f} -> "
                                       f"{float(r[probe.TUNED_ACCURACY]):.3f}" for r in probes)})
    attention_csv = folder / layout.ATTENTION / f"{attention.ATTENTION}.csv"
    masses = read_csv(attention_csv) if attention_csv.is_file() else []
    if masses and attention.TUNED_MEAN in masses[0]:
        rows.append({"quantity": "document -> query attention, before -> after training",
                     "source": SOURCE[("representations", "attention")],
                     "ours": "; ".join(f"layer {r['layer']}: {float(r[attention.BASE_MEAN]):.4f} -> "
                                       f"{float(r[attention.TUNED_MEAN]):.4f}" for r in masses)})
    return Table("Our dynamics and representations beside the source study's", rows or [{"quantity": "none"}])


def patching(root: Path) -> Section:
    """Activation patching: which components and positions carry the relevance judgment, base vs fine-tuned."""
    folder = root / layout.PATCHING
    tuned = folder / layout.TUNED
    items = [stage_table(tuned / patching_job.IE_MEAN),
             table_item(tuned / patching_job.TOP_SITES, limit=SHORT_ROWS,
                        columns=[patching_job.COMPONENT, patching_job.LAYER, patching_job.POSITIONS,
                                 patching_job.MEAN_IE, patching_job.STD])]
    for component, what in (("resid_post", "residual stream after"), ("attn", "attention output of"),
                            ("mlp", "MLP output of")):
        items.append(figure_item(tuned / patching_job.component_figure(component),
                                 f"Fine-tuned: mean IE of patching the {what} each "
                                 "layer at each position group (clean relevant into corrupted non-relevant)"))
    for group in ("last", "document", "instruction", "query"):
        items.append(figure_item(tuned / patching_job.head_figure("heads", group),
                                 f"Fine-tuned: mean IE per head at the {group} "
                                 "positions"))
    items += [table_item(folder / layout.BASE_VS_TUNED / compare.SUMMARY,
                         "Base vs fine-tuned: do they rely on the same components? (RBO, Spearman, magnitudes)"),
              table_item(folder / layout.BASE_VS_TUNED_HEADS / compare.SUMMARY, "Base vs fine-tuned, per head"),
              figure_item(folder / layout.BASE / patching_job.component_figure("resid_post"),
                          "Base model: mean IE, residual stream")]
    circuit = folder / layout.CIRCUIT
    if circuit.is_dir():  # the study's circuit run (mechanisms.circuit)
        items += [table_item(circuit / FAITHFULNESS, "Fine-tuned: the logit difference its top-edge circuits "
                             "recover, every other edge mean-ablated (edges scored by EAP-IG; exact ablation)"),
                  figure_item(circuit / f"{FAITHFULNESS}.png", "Fine-tuned: faithfulness of the top-edge circuits")]
        if (circuit / f"{CIRCUIT}.png").is_file():  # none when no circuit short of the whole model is faithful
            items.append(figure_item(circuit / f"{CIRCUIT}.png", "Fine-tuned: the smallest top-edge circuit within "
                                     "20 % of the whole model's judgment"))
    run = read_json(tuned / "manifest.json")  # this run's own estimator (an older run's figure may lie beside it)
    method = run.get("config", {}).get("attribution") if "validation" in run else None
    if method:
        items += [table_item(tuned / patching_job.VALIDATION, f"Fine-tuned: the {method} attribution estimate "
                             "against exact patching per site type (Pearson, Spearman, top-20 recall, passes a pair)"),
                  figure_item(tuned / patching_job.validation_figure(method),
                              f"Fine-tuned: {method} estimate against the exact IE of every site and pair")]
    return Section("Activation patching", "", items)


def stage_table(ie_mean: Path) -> Table | Missing:
    """The source's three stages beside the strongest site of ours at the matching position group."""
    if not ie_mean.is_file():
        return Missing(ie_mean)
    rows = [r for r in read_csv(ie_mean) if r[patching_job.POSITIONS] != "all"]
    out = []
    for stage, group in (("early", "document"), ("middle", "instruction"), ("late", "last")):
        picked = [r for r in rows if r[patching_job.POSITIONS] == group]
        if group == "document":  # early: the first third of the stack
            depth = max(int(r[patching_job.LAYER]) for r in rows) + 1
            picked = [r for r in picked if int(r[patching_job.LAYER]) < depth / 3]
        best = max(picked, key=lambda r: abs(float(r[patching_job.MEAN_IE])), default=None)
        out.append({"stage (source)": SOURCE[("patching", stage)],
                    "ours: strongest site there": f"{best[patching_job.COMPONENT]} layer {best[patching_job.LAYER]}, "
                                                  f"IE {float(best[patching_job.MEAN_IE]):.2f}" if best else "-"})
    return Table("The source's three stages beside our strongest site at each position group (fine-tuned)", out)


def heads(root: Path) -> Section:
    """Attention heads: their interaction and direct effects, and what knocking the top ones out costs."""
    folder = root / layout.HEADS
    knockout = table_item(folder / layout.KNOCKOUT / ko.KNOCKOUT)
    return Section("Heads and knockouts", "", [
        table_item(folder / layout.HEAD_ANALYSIS / head_analysis.TOP_HEADS, limit=SHORT_ROWS),
        figure_item(folder / layout.HEAD_ANALYSIS / head_analysis.INTERACTION_FIGURE,
                    "Attention interaction score per head, S = s(q, d+) − "
                    "s(q, d−); top-IE heads outlined"),
        figure_item(folder / layout.HEAD_ANALYSIS / head_analysis.DIRECT_FIGURE,
                    "Each head's direct contribution to the answer logit "
                    "difference"),
        knockout_verdict(knockout),
        *([link_item(knockout, "Every head set knocked out: each metric, its relative change and 95% CI")]
          if isinstance(knockout, Table) else []),
        figure_item(folder / layout.KNOCKOUT / ko.KNOCKOUT_FIGURE,
                    "Relative change of judgment F1 and nDCG@10 when each head set is mean-ablated, 95% bootstrap CIs"),
    ])


def knockout_verdict(knockout: Table | Missing) -> Table | Missing:
    """Top-IE heads vs random heads, with CIs, beside the source's finding."""
    if not isinstance(knockout, Table):
        return knockout
    rows = [r for r in knockout.rows if r[ko.HEAD_SET] != ko.FULL_MODEL]
    out = []
    for r in rows:
        kind = "random" if r[ko.HEAD_SET].lower().startswith("random") else "top-IE"
        for metric in (ko.F1, ko.PAIR_ACCURACY, ko.NDCG10):
            if f"{metric} {ko.CHANGE}" in r:
                change, low, high = (float(r[f"{metric} {k}"]) for k in (ko.CHANGE, ko.CI_LOW, ko.CI_HIGH))
                text = f"{change:+.3f} [{low:+.3f}, {high:+.3f}]" if change == change else \
                    f"undefined: the full model's {metric} is 0"  # NaN: nothing to be relative to
                out.append({"set": r[ko.HEAD_SET], "kind": kind, "metric": metric, "change [95% CI]": text})
    return Table("Knockout: top-IE vs random head sets, relative change with 95% CI; source: "
                 + SOURCE[("heads", "knockout")], out or [{"set": "none"}])


# One-line captions for the figures not placed by hand above (matched by file name, then by folder).
CAPTIONS = {
    anatomy.SPECTRA_FIGURE: "Singular values of each module's ΔW (mean over layers)",
    "pca_base.png": "PCA of the base model's last-token states per layer, relevant vs not",
    "attention_base.png": "Document → query attention mass per head, base model",
    "attention_fine_tuned.png": "Document → query attention mass per head, fine-tuned",
    "grad_norms_row_normalised.png": "LoRA gradient norm per layer, each step scaled to its largest layer",
    patching_job.component_figure("resid_pre"):
        "Mean IE of patching the residual stream entering each layer, per position group",
    patching_job.component_figure("resid_post"):
        "Mean IE of patching the residual stream after each layer, per position group",
    patching_job.component_figure("attn"): "Mean IE of patching each layer's attention output, per position group",
    patching_job.component_figure("mlp"): "Mean IE of patching each layer's MLP output, per position group",
}


def _caption(path: Path) -> str:
    name = path.name
    if name.startswith("ie_heads_"):
        text = f"Mean IE per head at the {name[len('ie_heads_'):-4]} positions"
    else:
        text = CAPTIONS.get(name, name[:-4].replace("_", " "))
    return f"{text} ({path.parent.name})"


def add_the_rest(section: Section, root: Path, folders: list[str], shown: set[Path]) -> None:
    """Every table (a .md written beside its .csv) and figure of these stage folders not already in the report."""
    for folder in folders:
        for md in sorted((root / folder).rglob("*.md")):
            if md.with_suffix(".csv").is_file() and md.with_suffix(".csv") not in shown:
                section.items.append(rest_table(md.with_suffix("")))
        for png in sorted((root / folder).rglob("*.png")):
            if png not in shown:
                section.items.append(Figure(_caption(png), png))


def rest_table(stem: Path) -> Table | Link:
    """A stage's table not placed by hand: shown when short and narrow, else a raw listing linked as its CSV."""
    caption = f"{table_title(stem)} ({stem.parent.name})"
    item = table_item(stem, caption)
    assert isinstance(item, Table)  # add_the_rest found its CSV
    rows = read_csv(stem.with_suffix(".csv"))
    if len(rows) <= LISTING_ROWS and (not rows or len(rows[0]) <= LISTING_COLUMNS):
        return item
    link = link_item(item, caption)
    return link if isinstance(link, Link) else item


def _shown(parts: list[Section]) -> set[Path]:
    paths = set()
    for item in (i for s in parts for i in s.items):
        if isinstance(item, (Figure, Missing, Link)):
            paths.add(item.path)
        elif isinstance(item, Table) and item.csv:
            paths.add(item.csv)
    return paths


STAGE_SECTIONS = {"LoRA training": ["train", "checkpoints"], "LoRA anatomy": ["ablations"],
                  "Training dynamics and representations": ["representations"],
                  "Activation patching": ["patching"], "Heads and knockouts": ["heads"]}


def sections(root: Path, config: StudyConfig) -> list[Section]:
    """Every section of the report, each stage folder's remaining tables and figures appended to its own."""
    parts = [findings_section(root, config), overview(root, config), zero_shot(root), training(root),
             ablations(root), representations(root), patching(root), heads(root)]
    shown = _shown(parts)
    for section in parts:
        add_the_rest(section, root, STAGE_SECTIONS.get(section.title, []), shown)
        for item in section.items:  # captions written by the jobs name their folders in full
            if isinstance(item, (Table, Figure, Link)):
                item.caption = item.caption.replace(f"{root.resolve()}/", "").replace(f"{root}/", "")
    return parts


def write_report(root: str | Path, config: StudyConfig) -> dict[str, Any]:
    """report.md and report.html in `root`; returns their paths and how many figures, tables and gaps."""
    root = Path(root)
    parts = sections(root, config)
    atomic_write_text(root / layout.REPORT_MD, render_markdown(parts, root))
    atomic_write_text(root / layout.REPORT_HTML, render_html(parts, root))
    items = [i for s in parts for i in s.items]
    return {"html": str(root / layout.REPORT_HTML), "markdown": str(root / layout.REPORT_MD),
            "figures": sum(isinstance(i, Figure) for i in items), "tables": sum(isinstance(i, Table) for i in items),
            "links": sum(isinstance(i, Link) for i in items),
            "missing": [str(i.path) for i in items if isinstance(i, Missing)]}
