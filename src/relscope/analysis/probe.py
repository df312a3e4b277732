"""Linear probes and PCA on the last-token hidden state of every layer (`relscope probe BASE [ADAPTER]`).

Hidden states are computed once per (model, adapter content, template, examples) and cached in states_*.npz; a probe
is scikit-learn's logistic regression (on standardised features) scored by k-fold cross-validation whose folds
never split a query (StratifiedGroupKFold), so a probe cannot pass by recognising the query.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from relscope.analysis.examples import (
    LabelledPrompt,
    adapter_state,
    labelled_prompts,
    last_token_states,
    load_with_prompts,
)
from relscope.analysis.settings import ProbeSettings, study_layers
from relscope.io import atomic_path, atomic_write_json
from relscope.manifest import build_manifest, cache_identity
from relscope.models.scoring import unwrap
from relscope.reports import plots
from relscope.reports.tables import write_table

if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn
    from transformers import PreTrainedModel

PROBE = "probe"  # the table (.csv, .md) and figure (.png) written
BASE, TUNED = "base", "fine-tuned"  # the model variants probed: columns "<variant> accuracy", "<variant> std"
BASE_ACCURACY, TUNED_ACCURACY = f"{BASE} accuracy", f"{TUNED} accuracy"
LAYER = "layer"  # the first column: 0 = embeddings
PCA_TUNED_FIGURE = "pca_fine_tuned.png"  # PCA of the fine-tuned model's states (pca_base.png: the base's)


@dataclass(frozen=True)
class ProbeResult:
    layer: int  # 0 = the embeddings, i = after layer i-1 ... as transformers' hidden_states
    accuracy: float
    std: float


def probe_accuracy(states: np.ndarray, labels: np.ndarray, queries: np.ndarray, folds: int = 5,
                   seed: int = 0) -> tuple[float, float]:
    """Mean and std over folds of a logistic-regression probe's held-out accuracy."""
    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    scores = cross_val_score(probe, states, labels, groups=queries, cv=split)
    return float(scores.mean()), float(scores.std())


def probe_layers(states: np.ndarray, labels: np.ndarray, queries: np.ndarray, layers: list[int],
                 folds: int = 5, seed: int = 0) -> list[ProbeResult]:
    """One probe per layer in `layers` over `states` (layers + 1, n, d): its held-out accuracy and std."""
    return [ProbeResult(layer, *probe_accuracy(states[layer], labels, queries, folds, seed)) for layer in layers]


def cached_states(model: PreTrainedModel | PeftModel, backbone: nn.Module, examples: list[LabelledPrompt],
                  pad_id: int, cache: Path, key: dict, adapter: bool) -> np.ndarray:
    """The (layers + 1, n, d) states from `cache` when it was made from the same inputs, else computed and saved."""
    digest = hashlib.sha256(json.dumps({**key, "adapter_on": adapter, "ids": [e.prompt.input_ids for e in examples]},
                                       sort_keys=True).encode()).hexdigest()[:20]
    stored = _stored_states(cache, digest)
    if stored is not None:
        return stored
    with adapter_state(model, adapter):
        states = last_token_states(backbone, [e.prompt for e in examples], pad_id)
    with atomic_path(cache) as tmp, tmp.open("wb") as f:
        np.savez(f, states=states, digest=np.array(digest))
    return states


def _stored_states(cache: Path, digest: str) -> np.ndarray | None:
    """The cached states when `cache` holds them for `digest`; None when absent, made from other inputs or damaged
    (a cache is ours to recompute, never a reason to stop)."""
    try:
        with np.load(cache) as stored:
            if str(stored["digest"]) == digest:
                return stored["states"]
    except Exception:  # noqa: BLE001 - absent, truncated, not an npz, hand-edited: any of them is a cache miss
        pass
    return None


def run_probe(states: dict[str, np.ndarray], examples: list[LabelledPrompt], out: Path, layers: list[int] | None,
              folds: int, title: str, config: dict) -> list[dict]:
    """Probe every layer of each model variant ("base", "fine-tuned"), write the table and figures."""
    labels = np.array([e.label for e in examples])
    queries = np.array([e.qid for e in examples])
    depth = next(iter(states.values())).shape[0]
    layers = layers or study_layers(depth - 1, hidden_states=True)
    results = {name: probe_layers(s, labels, queries, layers, folds) for name, s in states.items()}
    rows = [{LAYER: layer, **{f"{name} accuracy": r[i].accuracy for name, r in results.items()},
             **{f"{name} std": r[i].std for name, r in results.items()}} for i, layer in enumerate(layers)]
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, out / PROBE, f"{title}: linear-probe accuracy per layer ({folds}-fold, folds split by query)")
    plots.save(plots.lines(layers, {name: [x.accuracy for x in r] for name, r in results.items()},
                           f"{title}: probe accuracy per layer", "layer (0 = embeddings)", "held-out accuracy"),
               out / f"{PROBE}.png")
    shown = layers[:: max(1, len(layers) // 6)][:6]
    for name, s in states.items():
        points = {layer: PCA(n_components=2, random_state=0).fit_transform(s[layer]) for layer in shown}
        plots.save(plots.pca_grid(points, labels, f"{title} ({name}): PCA of last-token states"),
                   out / f"pca_{name.replace(' ', '_').replace('-', '_')}.png")
    atomic_write_json(out / "manifest.json", build_manifest(config, {}))
    return rows


def probe_job(settings: ProbeSettings, out: str | Path) -> list[dict]:
    """Probe the base model (and, given an adapter, the fine-tuned one, loaded once and switched)."""
    from relscope.data.dataset import data_path
    from relscope.data.groups import read_groups

    s, out = settings, Path(out)
    groups, adapter, max_groups, negative_kind, folds = s.groups, s.adapter, s.max_groups, s.negatives, s.folds
    layers = list(s.layers) if s.layers else None
    loaded, builder = load_with_prompts(s.model, adapter, s.template, s.max_length)
    template = builder.template.name
    examples = labelled_prompts(read_groups(data_path(str(groups))), builder, max_groups, negative_kind)
    backbone = loaded.spec.backbone_of(unwrap(loaded.model))
    # Keyed on what the model is (the adapter's bytes, the base's files, relscope's version), never on the adapter's
    # path alone: an adapter retrained into the same folder must not be probed from the old one's states.
    revision = getattr(loaded.model.config, "_commit_hash", None)  # a hub model's commit
    key = {**cache_identity(loaded.source, adapter, revision), "template": template,
           "dtype": str(next(loaded.model.parameters()).dtype)}
    pad = loaded.tokenizer.pad_token_id
    states = {BASE: cached_states(loaded.model, backbone, examples, pad, out / "states_base.npz", key, False)}
    if adapter:
        states[TUNED] = cached_states(loaded.model, backbone, examples, pad, out / "states_tuned.npz", key, True)
    config = {"model": loaded.source, "adapter": adapter, "template": template, "groups": str(groups),
              "max_groups": max_groups, "negative_kind": negative_kind, "folds": folds, "examples": len(examples)}
    return run_probe(states, examples, out, layers, folds, f"{loaded.name} {template}", config)
