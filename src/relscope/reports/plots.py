"""Figures as pure functions: data in, matplotlib Figure out (the caller saves it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


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


def heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, label: str) -> Figure:
    """values[row, col]; NaN cells are left blank."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(cols), 1.2 + 0.22 * len(rows)))
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title(title)
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


def save(fig: Figure, path: Path) -> None:
    """PNG, written atomically: a reader never sees half a file."""
    from relscope.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
