"""Where each stage of a study writes, below the study's folder: the stages write there and the report reads there."""

from __future__ import annotations

# the stages' folders (also their names: `--force STAGE`)
ZERO_SHOT, TRAIN, CHECKPOINTS, ABLATIONS = "zero-shot", "train", "checkpoints", "ablations"
REPRESENTATIONS, PATCHING, HEADS, REPORT = "representations", "patching", "heads", "report"

KEEP, STATS = "keep", "stats"  # ablations/: keep-only ablations, ΔW statistics
DYNAMICS, ATTENTION, PROBE = "dynamics", "attention", "probe"  # representations/
TUNED, BASE = "fine-tuned", "base"  # patching/: the two patch runs
BASE_VS_TUNED, BASE_VS_TUNED_HEADS = "base-vs-fine-tuned", "base-vs-fine-tuned-heads"  # patching/: their comparisons
CIRCUIT = "circuit"  # patching/: the fine-tuned model's edge attribution and circuit
HEAD_ANALYSIS, KNOCKOUT = "heads", "knockout"  # heads/
REPORT_HTML, REPORT_MD = "report.html", "report.md"
