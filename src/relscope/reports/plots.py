"""Figures as pure functions: data in, matplotlib Figure out (the caller saves it)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


def metric_curves(steps: Sequence[int], series: Mapping[str, Sequence[float]], title: str,
                  marker_step: int | None = None) -> Figure:
    """One line per metric against the training step; a dashed line at `marker_step` (convergence)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, values in series.items():
        ax.plot(steps, values, marker="o", label=name)
    if marker_step is not None:
        ax.axvline(marker_step, color="grey", linestyle="--", linewidth=1, label=f"converged (step {marker_step})")
    ax.set_xlabel("step")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def wrapped(title: str, width_inches: float) -> str:
    """The title broken into lines that fit the axes (about 11 characters an inch at 10 pt)."""
    return textwrap.fill(title, max(20, int(width_inches * 11)))


def heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, label: str,
            xlabel: str | None = None, ylabel: str | None = None, diverging: bool = False,
            marks: Sequence[tuple[int, int]] = ()) -> Figure:
    """values[row, col]; NaN cells are left blank. diverging: a red-blue scale centred on 0 (changes).
    marks: (row, col) cells outlined in black (e.g. the top heads by another measure)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 + 0.5 * len(cols)), 1.6 + 0.22 * len(rows)))
    limit = float(np.nanmax(np.abs(values))) if diverging and np.isfinite(values).any() else None
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="RdBu_r" if diverging else "viridis",
                      vmin=-limit if limit else None, vmax=limit)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for row, col in marks:
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(wrapped(title, fig.get_figwidth() - 1.5), fontsize=10)  # the colour bar takes the rest
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    return fig


def spectra(curves: Mapping[str, Sequence[float]], title: str) -> Figure:
    """Singular values (descending) of several matrices, log scale."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, values in curves.items():
        ax.semilogy(range(1, len(values) + 1), values, marker=".", label=name, alpha=0.8)
    ax.set_xlabel("index")
    ax.set_ylabel("singular value")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def lines(x: Sequence[float], series: Mapping[str, Sequence[float]], title: str, xlabel: str, ylabel: str,
          log_y: bool = False, log_x: bool = False) -> Figure:
    """One line per series against a shared x."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, values in series.items():
        ax.plot(x, values, label=name, linewidth=1.2, marker="o" if log_x else None, markersize=3)
    if log_y:
        ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(wrapped(title, 6), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


class LossDrop(Protocol):
    """A span of steps over which the smoothed loss fell (e.g. relscope.analysis.dynamics.PhaseTransition)."""

    @property
    def step(self) -> int:
        """The middle of the span."""

    @property
    def start_step(self) -> int:
        """The first step of the span."""

    @property
    def end_step(self) -> int:
        """The last step of the span."""

    @property
    def loss_before(self) -> float:
        """The smoothed loss at `start_step`."""

    @property
    def loss_after(self) -> float:
        """The smoothed loss at `end_step`."""


def training_curves(curves: Mapping[str, np.ndarray], smoothed_loss: np.ndarray, cliff: LossDrop,
                    name: str, held_out: tuple[np.ndarray, np.ndarray] | None = None) -> Figure:
    """Loss (raw and smoothed, the phase transition shaded) above accuracy and mean P(correct), and the held-out
    accuracy at its steps when the run logged one."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True)
    steps = curves["step"]
    top.plot(steps, curves["loss"], color="lightgrey", linewidth=0.8, label="loss")
    top.plot(steps, smoothed_loss, color="black", linewidth=1.5, label="loss (smoothed)")
    top.axvspan(cliff.start_step, cliff.end_step, color="tab:red", alpha=0.15,
                label=f"steepest drop: {cliff.loss_before:.3f} → {cliff.loss_after:.3f}")
    top.axvline(cliff.step, color="tab:red", linewidth=1)
    top.set_ylabel("training loss")
    top.set_title(f"{name}: training curves")
    top.legend(fontsize=8)
    for key, label in (("accuracy", "group accuracy"), ("p_correct", "mean P(correct)")):
        bottom.plot(steps, curves[key], linewidth=0.8, alpha=0.8, label=label)
    if held_out is not None and len(held_out[0]):
        bottom.plot(*held_out, marker="o", color="black", linewidth=1.2, label="held-out accuracy")
    bottom.axvline(cliff.step, color="tab:red", linewidth=1)
    bottom.set_ylim(0, 1)
    bottom.set_xlabel("optimizer step")
    bottom.set_ylabel("fraction")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def step_heatmap(values: np.ndarray, steps: Sequence[int], rows: Sequence[str], title: str, label: str,
                 log: bool = False) -> Figure:
    """values[row, step] over training steps (rows: layers, bottom-up); a log colour scale on request."""
    from matplotlib.colors import LogNorm

    finite = values[np.isfinite(values) & (values > 0)] if log else values[np.isfinite(values)]
    norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if log and finite.size else None
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.13 * len(rows)))
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", origin="lower", cmap="magma", norm=norm,
                      extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, len(rows) - 0.5), interpolation="nearest")
    ticks = range(0, len(rows), max(1, len(rows) // 10))
    ax.set_yticks(list(ticks), [rows[i] for i in ticks])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    return fig


def pca_grid(points: Mapping[int, np.ndarray], labels: np.ndarray, title: str,
             names: tuple[str, str] = ("label 0", "label 1")) -> Figure:
    """One PCA scatter per layer (points[layer]: (n, 2)), coloured by the binary label."""
    fig, axes = plt.subplots(1, len(points), figsize=(2.6 * len(points), 2.9), squeeze=False)
    for ax, (layer, xy) in zip(axes[0], points.items()):
        for value, colour in ((0, "tab:red"), (1, "tab:blue")):
            chosen = labels == value
            ax.scatter(xy[chosen, 0], xy[chosen, 1], s=8, alpha=0.6, color=colour, label=names[value])
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("PC 1", fontsize=8)
        ax.set_ylabel("PC 2", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def bars(names: Sequence[str], series: Mapping[str, Sequence[float]], title: str, ylabel: str = "score",
         errors: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> Figure:
    """Grouped bars: one group per name, one bar per series, the value printed on each bar; `errors` gives a
    series' (low, high) interval bounds, drawn as error bars."""
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(names), 3.6))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        positions = np.arange(len(names)) + (i - (len(series) - 1) / 2) * width
        yerr = None
        if errors and label in errors:
            low, high = (np.asarray(b, dtype=float) for b in errors[label])
            yerr = np.stack([np.asarray(values) - low, high - np.asarray(values)])
        drawn = ax.bar(positions, values, width, label=label, yerr=yerr, capsize=3)
        ax.bar_label(drawn, fmt="%.3f", fontsize=7)
    crowded = max(map(len, names), default=0) * 0.09 > 1.1  # a label wider than its group's 1.1 inches
    ax.set_xticks(range(len(names)), names, rotation=20 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def agreement(exact: np.ndarray, estimated: np.ndarray, types: Sequence[str], title: str, method: str,
              what: str = "IE") -> Figure:
    """One scatter per site type of estimated against exact values ((pairs, sites) arrays, `types` per site), the
    diagonal drawn: a point on it is a site the estimate gets exactly."""
    names = list(dict.fromkeys(types))
    fig, axes = plt.subplots(1, len(names), figsize=(0.6 + 2.7 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        mask = np.array([t == name for t in types])
        x, y = exact[:, mask].ravel(), estimated[:, mask].ravel()
        ax.scatter(x, y, s=6, alpha=0.5)
        bounds = [min(x.min(), y.min()), max(x.max(), y.max())] if len(x) else [0, 1]
        ax.plot(bounds, bounds, color="grey", linewidth=0.8)
        ax.set_title(f"{name} ({int(mask.sum())} sites)", fontsize=9)
        ax.set_xlabel(f"exact {what}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{method} estimate")
    fig.suptitle(wrapped(title, 0.6 + 2.7 * len(names)), fontsize=10)
    fig.tight_layout()
    return fig


def circuit(edges: Sequence[Mapping], depth: int, n_heads: int, title: str) -> Figure:
    """A circuit's edges ({"writer", "reader", "mean score"} with relscope's node names: emb, a3.h5 or a3, m3;
    a3.in, m3.in, logits) on the residual stream: a row per layer, attention inputs on the left, the heads (or the
    whole attention block) in the middle, MLP inputs and outputs on the right; each edge an arc from its writer to
    its reader, blue raising the relevance judgment, red lowering it, thicker the larger |score|."""
    middle = (n_heads - 1) / 2

    def place(name: str) -> tuple[float, float]:
        if name in ("emb", "logits"):
            return middle, (-1.0 if name == "emb" else float(depth))
        part, _, rest = name.partition(".")
        layer, mlp = int(part[1:]), part[0] == "m"
        if rest == "in":
            return (n_heads + 0.5 if mlp else -1.5), layer + (0.35 if mlp else -0.15)
        if mlp:
            return n_heads + 1.5, layer + 0.55
        return (float(rest[1:]) if rest.startswith("h") else middle), layer + 0.2

    fig, ax = plt.subplots(figsize=(2.5 + 0.35 * n_heads, 2.0 + 0.28 * depth))
    largest = max((abs(float(e["mean score"])) for e in edges), default=1.0) or 1.0
    nodes: dict[str, tuple[float, float]] = {}
    for edge in edges:
        start, end = place(edge["writer"]), place(edge["reader"])
        score = float(edge["mean score"])
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(
            arrowstyle="-|>", color="tab:blue" if score > 0 else "tab:red", alpha=0.7, shrinkA=2, shrinkB=2,
            linewidth=0.5 + 2.5 * abs(score) / largest, connectionstyle="arc3,rad=0.25"))
        nodes[edge["writer"]], nodes[edge["reader"]] = start, end
    for name, (x, y) in nodes.items():
        ax.scatter([x], [y], s=12, color="black", zorder=3)
        ax.annotate(name, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xlim(-2.5, n_heads + 2.5)
    ax.set_ylim(-1.5, depth + 0.5)
    ax.set_xticks([-1.5, middle, n_heads + 0.5, n_heads + 1.5], ["attn in", "heads", "MLP in", "MLP"], fontsize=7)
    ax.set_ylabel("layer")
    ax.set_title(wrapped(title, 2.5 + 0.35 * n_heads), fontsize=9)
    ax.grid(alpha=0.2)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> None:
    """PNG, written atomically: a reader never sees half a file."""
    from relscope.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
