"""Layer-group training (`relscope freeze`): train one config several times with only some layers trainable,
the same step budget each time, and tabulate training accuracy and dev nDCG@10.

A variant names the trainable layers: a group (early, middle, late: thirds of the depth), groups joined by '+'
(early+middle), 'all', or layer ranges ('0-9', '0.25-0.75' as fractions of depth). Every other layer is frozen
(its LoRA B stays 0, so it computes exactly the base model's function).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from relscope.analysis.lora_surgery import parse_layers
from relscope.analysis.settings import FreezeSettings
from relscope.config import to_mapping
from relscope.models.lora import LAYER_GROUPS, layer_groups

FREEZE = "freeze"  # the table (.csv, .md) and figure (.png) written
TRAINABLE, TRAIN_ACCURACY = "trainable", "train accuracy (last 10%)"  # its columns: the variant, the late accuracy
HELD_OUT_ACCURACY = "held-out accuracy"  # 001's score of a freezing variant: the last eval_accuracy (eval_groups)


def trainable_layers(variant: str, n_layers: int) -> set[int]:
    """The layers `variant` leaves trainable: all, layer groups joined by +, or layer ranges."""
    if variant == "all":
        return set(range(n_layers))
    groups = layer_groups(n_layers)
    parts = variant.split("+")
    if all(p in groups for p in parts):
        return {layer for p in parts for layer in groups[p]}
    return parse_layers(variant, n_layers)  # ranges; its error names the fix


def freeze_list(variant: str, n_layers: int) -> tuple[str, ...]:
    """The lora.freeze entries that leave exactly `variant` trainable."""
    frozen = sorted(set(range(n_layers)) - trainable_layers(variant, n_layers))
    groups = layer_groups(n_layers)
    whole = [g for g in LAYER_GROUPS if set(groups[g]) <= set(frozen)]
    rest = sorted(set(frozen) - {layer for g in whole for layer in groups[g]})
    return tuple(whole) + tuple(str(layer) for layer in rest)


def held_out_accuracy(run_dir: Path) -> float | None:
    """The last eval_accuracy a run logged (study 001 scores its freezing variants so), or None without held-out
    groups (train config eval_groups)."""
    from relscope.training.callbacks import read_log

    values = [record["eval_accuracy"] for record in read_log(run_dir / "log.jsonl") if "eval_accuracy" in record]
    return values[-1] if values else None


def late_accuracy(run_dir: Path, fraction: float = 0.1) -> float:
    """Mean group accuracy over the last `fraction` of the logged steps (one step's 4 groups are too noisy)."""
    from relscope.training.callbacks import read_log

    values = [record["accuracy"] for record in read_log(run_dir / "log.jsonl") if "accuracy" in record]
    return float(np.mean(values[-max(1, int(len(values) * fraction)):]))


def freeze_sweep(settings: FreezeSettings, out: str | Path, progress: bool = True) -> list[dict]:
    """Train each variant (resuming any finished or interrupted one), then measure its last checkpoint."""
    from relscope.analysis.anatomy import NDCG, _finish, _measure, _reranker
    from relscope.data.dev import load_dev_run
    from relscope.models.adapters import load_trained
    from relscope.models.load import model_depth
    from relscope.reports import plots
    from relscope.training.checkpoint import latest_checkpoint
    from relscope.training.job import run_train_job

    config, variants, dev = settings.train_config(), settings.variants, settings.dev
    out = Path(out)
    depth = model_depth(config.model)
    plans = {v: freeze_list(v, depth) for v in variants}  # a bad variant fails here, before any training
    dataset = load_dev_run(dev)
    rows, per_query = [], {}
    for variant, frozen in plans.items():
        run_dir = out / f"train-{variant.replace('+', '_')}"
        variant_config = replace(config, lora=replace(config.lora, freeze=frozen))
        # Never skipped on the folder alone: a finished run returns at once, but only after the train job has
        # checked its config.yaml, so a run another config left there is refused, not reported as this variant's.
        run_train_job(variant_config, run_dir, progress=progress)
        checkpoint = latest_checkpoint(run_dir)
        loaded, head, meta = load_trained(checkpoint, merge=True)
        metrics, per_query[variant] = _measure(_reranker(loaded, head, meta, checkpoint), dataset, dev)
        held_out = held_out_accuracy(run_dir)
        rows.append({TRAINABLE: variant, "layers": len(trainable_layers(variant, depth)),
                     **({HELD_OUT_ACCURACY: held_out} if held_out is not None else {}),
                     TRAIN_ACCURACY: late_accuracy(run_dir), **metrics})
    scored = {HELD_OUT_ACCURACY: [r[HELD_OUT_ACCURACY] for r in rows]} if HELD_OUT_ACCURACY in rows[0] else {}
    fig = plots.bars([r[TRAINABLE] for r in rows], {**scored, NDCG: [r[NDCG] for r in rows],
                                                    "train accuracy": [r[TRAIN_ACCURACY] for r in rows]},
                     f"{Path(config.model).name}: training only some layers ({config.max_steps} steps each)")
    return _finish(out, FREEZE, rows, f"Layer-group training, {config.max_steps} steps each", fig,
                   {"config": to_mapping(config), "variants": list(variants), "dev": to_mapping(dev)},
                   per_query=(TRAINABLE, per_query))
