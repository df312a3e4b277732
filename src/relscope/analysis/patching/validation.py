"""How well an attribution estimate agrees with exact patching, per site type: what `relscope patch --attribution
METHOD --validate` reports.

For each site type (resid, attn, mlp, head, score block, query, key; sites.SITE_TYPES) over the pairs patched:
- Pearson r and Spearman rho of the estimated against the exact IE, over every (pair, site) value: the per-example
  agreement RelP reports (Jafari et al. 2025, Table 1: Pearson r per component type on IOI);
- Pearson r of the two mean IEs over pairs, per site (what a heatmap of means shows);
- top-k recall: the share of the k sites of largest |mean exact IE| that are also among the k of largest |mean
  estimate| (k = 20): what preselecting k sites by the estimate for exact patching keeps. NaN for a site type of
  k sites or fewer, where every estimate would score 1.
An estimator of |IE| (AtP*'s GradDrop) is compared with the exact |IE| (`unsigned`): its means and top-k are then
over mean |IE| per site, not |mean IE|, so its row is not comparable with the signed estimators' rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from relscope.analysis.patching.sites import ATTENTION_EDITS, SITE_TYPES, Site

TOP_K = 20
TYPE_ORDER = ("resid", "attn", "mlp", "head", "score block", "query", "key")


def site_type(site: Site) -> str:
    """resid, attn, mlp, head (one head's output), score block (one head's attention weights on a block), query or
    key (one head's query vectors, one key/value head's key vectors)."""
    return SITE_TYPES[site.component if site.component in ATTENTION_EDITS else site.key[0]]


def top_k_recall(exact_means: np.ndarray, estimated_means: np.ndarray, k: int = TOP_K) -> float:
    """|top-k by |exact| ∩ top-k by |estimate|| / k; NaN unless there are more than k sites (or a value is not
    finite), where it would say nothing."""
    if len(exact_means) <= k or not (np.isfinite(exact_means).all() and np.isfinite(estimated_means).all()):
        return float("nan")
    exact_top = set(np.argsort(-np.abs(exact_means), kind="stable")[:k].tolist())
    estimated_top = set(np.argsort(-np.abs(estimated_means), kind="stable")[:k].tolist())
    return len(exact_top & estimated_top) / k


def _correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(Pearson, Spearman) of two flat arrays; NaN where either is constant (no ordering to agree on)."""
    from scipy import stats

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])


def agreement(exact: np.ndarray, estimated: np.ndarray, sites: Sequence[Site], k: int = TOP_K,
              unsigned: bool = False) -> list[dict]:
    """One row per site type present: `exact` and `estimated` are (pairs, sites) IE arrays over the same sites;
    `unsigned` compares an estimate of |IE| (AtP*'s GradDrop) with the exact |IE|."""
    types = np.array([site_type(s) for s in sites])
    rows = []
    for name in (t for t in TYPE_ORDER if t in set(types)):
        mask = types == name
        x, y = exact[:, mask], estimated[:, mask]
        x = np.abs(x) if unsigned else x
        pearson, spearman = _correlations(x.ravel(), y.ravel())
        rows.append({"site type": name, "sites": int(mask.sum()), "pairs": len(x), "pearson": pearson,
                     "spearman": spearman, "pearson of means": _correlations(x.mean(0), y.mean(0))[0],
                     f"top-{k} recall": top_k_recall(x.mean(0), y.mean(0), k)})
    return rows
