"""Training dynamics (`relscope dynamics RUN_DIR`): loss, accuracy and P(correct) curves, the loss "cliff"
(phase transition), and per-layer gradient norms over steps, from what `relscope train` already wrote
(log.jsonl and grad_norms.npz): no model is loaded.

Outputs: curves.csv, grad_norm_by_layer.csv (+ .md), groups.csv and four figures.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter1d

from relscope.analysis.settings import DynamicsSettings
from relscope.errors import DataError
from relscope.io import atomic_write_json, atomic_write_text
from relscope.manifest import build_manifest
from relscope.models.lora import LAYER_GROUPS, layer_groups
from relscope.reports import plots
from relscope.reports.tables import to_csv, write_table
from relscope.training.callbacks import GRAD_NORMS_FILE, load_grad_norms, read_log

CURVES = ("loss", "accuracy", "p_correct")
# The files written that the study report reads
SUMMARY, CURVES_FIGURE = "summary.json", "curves.png"
GRAD_NORMS_FIGURE, GROUPS_FIGURE = "grad_norms.png", "groups.png"
TENSOR_MEAN = "mean of tensor norms"  # grad_norm_by_layer's column of study 001's code's per-layer norm
PER_TENSOR = "per_tensor_mean"  # summary.json: the gradient norms as 001 computes and groups them
EVAL_ACCURACY = "eval_accuracy"  # summary.json: the held-out accuracy by step, when the run logged one


@dataclass(frozen=True)
class PhaseTransition:
    """The steepest drop of the smoothed loss over one window: where it starts and ends."""

    step: int  # the middle of the steepest window
    start_step: int
    end_step: int
    loss_before: float  # smoothed loss at start_step
    loss_after: float  # smoothed loss at end_step

    @property
    def drop(self) -> float:
        """How much the smoothed loss fell over the window (positive: it went down)."""
        return self.loss_before - self.loss_after


def read_curves(run_dir: Path) -> dict[str, np.ndarray]:
    """{"step", "loss", "accuracy", "p_correct"} from log.jsonl's training records, in step order."""
    path = run_dir / "log.jsonl"
    if not path.exists():
        raise DataError(f"{path}: not found; point at the --out folder of relscope train")
    records = {}
    for record in read_log(path):  # checked line by line: a damaged line is an error naming it
        if "loss" in record:
            if record["step"] in records:
                raise DataError(f"{path}: step {record['step']} is logged twice; the log was edited or joined by "
                                "hand: keep one record per step (a resume rewrites the log)")
            records[record["step"]] = record
    if len(records) < 2:
        raise DataError(f"{path}: fewer than two training steps logged; train longer first")
    steps = sorted(records)
    return {"step": np.array(steps), **{k: np.array([records[s].get(k, np.nan) for s in steps], dtype=float)
                                        for k in CURVES}}


def read_held_out(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, eval_accuracy) of the held-out evaluations a run logged (train config eval_groups); empty without."""
    records = [r for r in read_log(run_dir / "log.jsonl") if "eval_accuracy" in r]
    return np.array([r["step"] for r in records], dtype=int), np.array([r["eval_accuracy"] for r in records])


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the edges repeat the end values instead of shrinking toward zero."""
    return uniform_filter1d(np.asarray(values, dtype=float), size=max(1, window), mode="nearest")


def phase_transition(steps: np.ndarray, loss: np.ndarray, window: int, after: int = 0) -> PhaseTransition:
    """The window of `window` steps (starting after step `after`) over which the smoothed loss falls the most."""
    return steepest_drops(steps, loss, window, 1, after)[0]


def steepest_drops(steps: np.ndarray, loss: np.ndarray, window: int, count: int = 3,
                   after: int = 0) -> list[PhaseTransition]:
    """The `count` steepest non-overlapping windows of the smoothed loss, steepest first. A run can fall twice (a
    pairwise judge first unlearns its A/B position bias, later learns relevance): the summary lists both."""
    window = max(1, min(window, len(loss) - 1))
    smoothed = smooth(loss, window)
    drops = smoothed[:-window] - smoothed[window:]
    drops[steps[:-window] < after] = -np.inf
    if not np.isfinite(drops).any():
        raise DataError(f"no {window}-step window starts after step {after}; lower --after or --window")
    found: list[PhaseTransition] = []
    while len(found) < count and np.isfinite(drops).any():
        start = int(np.argmax(drops))
        end = start + window
        found.append(PhaseTransition(int(steps[(start + end) // 2]), int(steps[start]), int(steps[end]),
                                     float(smoothed[start]), float(smoothed[end])))
        drops[max(0, start - window):end] = -np.inf  # the next must not overlap this one
    return found


def layer_norms(norms: np.ndarray) -> np.ndarray:
    """(steps, layers): the gradient norm of each layer's LoRA parameters (all its modules together), as study 001's
    text defines it: the root of the summed squares. A layer without LoRA parameters (not adapted, or frozen) stays
    NaN."""
    squares = np.nansum(np.square(norms), axis=2)
    squares[np.all(np.isnan(norms), axis=2)] = np.nan
    return np.sqrt(squares)


def layer_tensor_means(tensor_means: np.ndarray) -> np.ndarray:
    """(steps, layers): the mean of the per-tensor gradient norms of each layer's LoRA tensors, as study 001's code
    computes it (every site holds as many tensors, A and B, so the mean of the sites' means is the layer's mean)."""
    return _nanmean(tensor_means, axis=2)


def study_001_groups(n_layers: int) -> dict[str, list[int]]:
    """001's early (0-9), middle (10-20) and late (21-31) layers of 32, as the same fractions of this depth."""
    middle, late = round(10 / 32 * n_layers), round(21 / 32 * n_layers)
    return {"early": list(range(middle)), "middle": list(range(middle, late)), "late": list(range(late, n_layers))}


def group_means(per_layer: np.ndarray, groups: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """early / middle / late: the mean over each third of the layers (or over `groups`), per step; and late/early."""
    groups = groups or layer_groups(per_layer.shape[1])
    means = {name: _nanmean(per_layer[:, groups[name]], axis=1) for name in LAYER_GROUPS}
    with np.errstate(divide="ignore", invalid="ignore"):
        means["late/early"] = means["late"] / means["early"]
    return means


def _nanmean(values: np.ndarray, axis: int | None = None):
    """Mean of the finite entries; NaN, silently, where there are none (frozen or unadapted layers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None  # JSON has no NaN


def analyse_dynamics(settings: DynamicsSettings, out: str | Path) -> dict:
    """Write the curves, the phase transition and the gradient-norm tables and figures; return the summary."""
    run_dir, out, window, after = Path(settings.run_dir), Path(out), settings.window, settings.after
    curves = read_curves(run_dir)
    drops = steepest_drops(curves["step"], curves["loss"], window, 3, after)
    cliff = drops[0]
    grad_file = run_dir / GRAD_NORMS_FILE
    grads = load_grad_norms(grad_file) if grad_file.exists() else None  # checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    smoothed = smooth(curves["loss"], window)
    rows = [{"step": int(s), **{k: float(curves[k][i]) for k in CURVES}, "loss (smoothed)": float(smoothed[i])}
            for i, s in enumerate(curves["step"])]
    atomic_write_text(out / "curves.csv", to_csv(rows))
    held_out = read_held_out(run_dir)
    plots.save(plots.training_curves(curves, smoothed, cliff, run_dir.name, held_out), out / CURVES_FIGURE)
    summary = {"run": str(run_dir), "window": window, "after": after,
               "phase_transition": {**asdict(cliff), "drop": cliff.drop},
               "steepest_drops": [{**asdict(d), "drop": d.drop} for d in drops]}
    if len(held_out[0]):  # study 001's eval-accuracy curve: 53.5 % at step 0 to 86 % by step 1600
        summary[EVAL_ACCURACY] = {"steps": held_out[0].tolist(), "accuracy": held_out[1].tolist()}
    if grads is not None and len(grads["steps"]):
        summary["grad_norms"] = _gradient_outputs(grads, out, run_dir.name)
    atomic_write_json(out / SUMMARY, summary)
    atomic_write_json(out / "manifest.json", build_manifest({"run": str(run_dir), "window": window, "after": after},
                                                            {"log": run_dir / "log.jsonl"}))
    return summary


def _gradient_outputs(grads: dict[str, np.ndarray], out: Path, name: str) -> dict:
    steps, per_layer = grads["steps"], layer_norms(grads["norms"])
    layers = [str(i) for i in range(per_layer.shape[1])]
    plots.save(plots.step_heatmap(per_layer.T, steps, layers, f"{name}: LoRA gradient norm per layer",
                                  "gradient norm (log scale)", log=True), out / GRAD_NORMS_FIGURE)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer with no gradient (frozen) keeps a NaN row
        by_row = per_layer.T / np.nanmax(per_layer.T, axis=1, keepdims=True)
    plots.save(plots.step_heatmap(by_row, steps, layers, f"{name}: gradient norm, each layer / its own maximum",
                                  "fraction of the layer's largest norm"), out / "grad_norms_row_normalised.png")
    means = group_means(per_layer)
    atomic_write_text(out / "groups.csv", to_csv([{"step": int(s), **{k: float(v[i]) for k, v in means.items()}}
                                                  for i, s in enumerate(steps)]))
    plots.save(plots.lines(steps, means, f"{name}: mean LoRA gradient norm by layer group", "step",
                           "gradient norm", log_y=True), out / GROUPS_FIGURE)
    per_module = _nanmean(grads["norms"], axis=0)  # (layers, modules), mean over steps
    per_tensor = layer_tensor_means(grads["tensor_means"]) if "tensor_means" in grads else None
    table = [{"layer": i, "all modules": float(_nanmean(per_layer[:, i])),
              **({TENSOR_MEAN: float(_nanmean(per_tensor[:, i]))} if per_tensor is not None else {}),
              **{str(label): float(per_module[i, j]) for j, label in enumerate(grads["labels"])}}
             for i in range(per_layer.shape[1])]
    write_table(table, out / "grad_norm_by_layer", f"{name}: mean LoRA gradient norm over {len(steps)} steps; "
                "'all modules' is the root of the summed squares of the layer's LoRA gradients (study 001's text), "
                f"'{TENSOR_MEAN}' the mean of its tensors' norms (001's code)")
    summary = {"steps": len(steps), "definition": "root of the summed squares of each layer's LoRA gradients "
               "(study 001's text)", "mean_by_group": {k: _finite_or_none(_nanmean(v)) for k, v in means.items()},
               "layer0_mean": _finite_or_none(_nanmean(per_layer[:, 0])),
               "last_layer_mean": _finite_or_none(_nanmean(per_layer[:, -1]))}
    if "head_norms" in grads and np.isfinite(grads["head_norms"]).any():  # a trained head (linear, two-logit)
        summary["head_mean"] = _finite_or_none(_nanmean(grads["head_norms"]))
    if per_tensor is not None:  # as 001 prints its numbers: its code's per-tensor mean, over its layer groups
        code = group_means(per_tensor, study_001_groups(per_tensor.shape[1]))
        summary[PER_TENSOR] = {
            "definition": "mean of each layer's LoRA tensor norms (study 001's code), groups 0-9 / 10-20 / 21-31 of 32 "
                          "as fractions of depth",
            "mean_by_group": {k: _finite_or_none(_nanmean(v)) for k, v in code.items()},
            "layer0_mean": _finite_or_none(_nanmean(per_tensor[:, 0]))}
    return summary
