"""`relscope compare RUN_A RUN_B`: do two settings rely on the same components?

Each run is a `relscope patch` output folder (pointwise vs pairwise prompts, MS MARCO vs NQ, two models, base vs
fine-tuned). Its components (component x layer x position group, or heads x position group with --heads) are ranked
by mean IE, and the two rankings compared by rank-biased overlap (the `rbo` package, extrapolated; p sets how
top-heavy it is) and Spearman's rho (scipy), with the magnitudes beside them: RBO looks at order only, so the mean
|IE| of each run's top components and the largest IE difference are reported too.

Runs over models of different depth are compared on relative depth: --depth-bins N averages each run's layers into N
equal slices of its depth first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relscope.analysis.patching.artefacts import IE_FILE, IE_HEADS_FILE, load_ie, load_ie_heads
from relscope.analysis.settings import CompareSettings
from relscope.config import to_mapping
from relscope.errors import ConfigError, DataError

SUMMARY, TOP = "summary", "top"  # the tables written (.csv and .md)
NO_EFFECT = 1e-6  # mean IEs that all lie within this of each other have no order to compare


@dataclass(frozen=True)
class Ranking:
    labels: list[str]  # one per component
    values: np.ndarray  # mean IE per component
    method: str = "exact"  # how the IEs were measured (relscope patch --attribution)


def load_ranking(folder: str | Path, heads: bool = False, depth_bins: int | None = None) -> Ranking:
    """Mean IE per component of a patch run: ie.npz (component, layer, group) or ie_heads.npz (group, layer, head)."""
    path = Path(folder) / (IE_HEADS_FILE if heads else IE_FILE)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; give a `relscope patch` output folder"
                          + (" of a run with --heads" if heads else ""))
    saved = load_ie_heads(path) if heads else load_ie(path)
    mean = saved.ie.mean(axis=0)
    layers = saved.layers
    axis = 1  # the layer axis in both layouts
    if depth_bins:
        mean, layers = _bin_layers(mean, layers, depth_bins, axis)
    if heads:
        groups = saved.groups
        labels = [f"{g} L{layer} H{h}" for g in groups for layer in layers for h in range(mean.shape[2])]
        group_of = [g for g in groups for _ in layers for _ in range(mean.shape[2])]
    else:
        components, groups = saved.components, saved.groups
        labels = [f"{c} L{layer} {g}" for c in components for layer in layers for g in groups]
        group_of = [g for _ in components for _ in layers for g in groups]
    # The group 'all' is every position at once: the residual stream there restores the whole effect (IE 1) in
    # every run by construction, so it would fill the top of both rankings and agree for no reason.
    keep = [i for i, g in enumerate(group_of) if g != "all"]
    if len(keep) < 2:  # one component (or none) has no order to compare, and Spearman's rho is undefined
        raise DataError(f"{path}: {len(keep)} component(s) besides the position group 'all' to rank; patch more "
                        "components, layers or position groups (--positions, --head-positions)")
    values = mean.reshape(-1)[keep]
    if np.ptp(values) <= NO_EFFECT:  # all equal (e.g. only positions before the first differing token): no order
        raise DataError(f"{path}: every component has the same mean IE ({values[0]:.3g}): there is no ranking to "
                        "compare; patch position groups that differ between clean and corrupted (document, last)")
    return Ranking([labels[i] for i in keep], values, saved.method)


def _bin_layers(mean: np.ndarray, layers: list[int], bins: int, axis: int) -> tuple[np.ndarray, list[int]]:
    if bins > len(layers):
        raise ConfigError(f"--depth-bins {bins} is more than the {len(layers)} layers patched; use at most that")
    edges = np.linspace(0, len(layers), bins + 1).round().astype(int)
    binned = [np.take(mean, range(edges[b], edges[b + 1]), axis=axis).mean(axis=axis) for b in range(bins)]
    return np.stack(binned, axis=axis), list(range(bins))


def rank_biased_overlap(a: list[str], b: list[str], p: float) -> float:
    """Extrapolated RBO of two complete rankings of the same items (Webber, Moffat & Zobel 2010, eq. 32):
    (X_k / k) p^k + (1 - p) / p * sum_d (X_d / d) p^d, X_d the overlap of the two top-d prefixes.
    (Written here: the PyPI `rbo` package pins numpy < 2; its value on a reversed list is a test fixture.)"""
    if sorted(a) != sorted(b) or len(set(a)) != len(a):
        raise ConfigError("RBO here compares two rankings of the same distinct items")
    seen_a, seen_b, overlap, total = set(), set(), 0, 0.0
    for depth, (x, y) in enumerate(zip(a, b), start=1):
        overlap += (x == y) + (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += overlap / depth * p ** depth
    k = len(a)
    return float(overlap / k * p ** k + (1 - p) / p * total)


def compare_rankings(a: Ranking, b: Ranking, p: float = 0.9, top: int = 20, by_magnitude: bool = True) -> dict:
    """RBO and Spearman of the two rankings (by |mean IE| or by signed mean IE), and the magnitudes beside them."""
    from scipy.stats import spearmanr

    if a.labels != b.labels:
        only_a = ", ".join(sorted(set(a.labels) - set(b.labels))[:3]) or "the same set in another order"
        raise ConfigError(f"the two runs patched different components ({only_a} in A only); patch the same "
                          "components, layers and position groups, or use --depth-bins for models of different depth")
    key_a, key_b = _keys(a, b, by_magnitude)
    order_a, order_b = np.argsort(-key_a, kind="stable"), np.argsort(-key_b, kind="stable")
    rho, p_value = spearmanr(key_a, key_b)
    return {
        "components": len(a.labels),
        f"RBO (p={p})": rank_biased_overlap([a.labels[i] for i in order_a], [b.labels[i] for i in order_b], p),
        "Spearman rho": float(rho), "Spearman p": float(p_value),
        f"top-{top} shared": len(set(order_a[:top]) & set(order_b[:top])),
        f"mean |IE| top-{top} A": float(np.abs(a.values[order_a[:top]]).mean()),
        f"mean |IE| top-{top} B": float(np.abs(b.values[order_b[:top]]).mean()),
        "max |IE_A - IE_B|": float(np.abs(a.values - b.values).max()),
        "mean |IE_A - IE_B|": float(np.abs(a.values - b.values).mean()),
    }


def _keys(a: Ranking, b: Ranking, by_magnitude: bool) -> tuple[np.ndarray, np.ndarray]:
    """What each run is ranked by: |mean IE|, or the signed mean IE."""
    return (np.abs(a.values), np.abs(b.values)) if by_magnitude else (a.values, b.values)


def side_by_side(a: Ranking, b: Ranking, top: int, by_magnitude: bool = True) -> list[dict]:
    """The top components of each run, rank by rank, with their IE in both runs."""
    key_a, key_b = _keys(a, b, by_magnitude)
    order_a, order_b = np.argsort(-key_a, kind="stable")[:top], np.argsort(-key_b, kind="stable")[:top]
    return [{"rank": r + 1, "A": a.labels[i], "IE in A": float(a.values[i]), "IE of it in B": float(b.values[i]),
             "B": b.labels[j], "IE in B": float(b.values[j]), "IE of it in A": float(a.values[j])}
            for r, (i, j) in enumerate(zip(order_a, order_b))]


def compare_job(settings: CompareSettings, out: str | Path) -> dict:
    """Rank both runs' components, compare the rankings (RBO, Spearman, magnitudes) and write the tables."""
    from relscope.io import atomic_write_json
    from relscope.manifest import build_manifest
    from relscope.reports.tables import write_table

    s = settings
    a, b = (load_ranking(r, s.heads, s.depth_bins) for r in (s.run_a, s.run_b))
    if a.method != b.method:  # an estimate ranked against exact effects would read as a change of mechanism
        raise ConfigError(f"{s.run_a} holds {a.method} effects and {s.run_b} {b.method} ones; compare runs measured "
                          "the same way (patch both exactly, or both with the same --attribution)")
    summary = compare_rankings(a, b, s.p, s.top, by_magnitude=not s.signed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table([summary], out / SUMMARY, f"{s.run_a} (A) vs {s.run_b} (B): components ranked by "
                f"{'mean IE' if s.signed else '|mean IE|'}")
    write_table(side_by_side(a, b, s.top, not s.signed), out / TOP, f"Top {s.top} components of each run")
    atomic_write_json(out / "manifest.json", build_manifest(to_mapping(s), {}, **summary))
    return summary
