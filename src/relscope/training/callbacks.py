"""Trainer callbacks: per-layer gradient norms, a JSONL log, and dev reranking at each checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from relscope.errors import TrainingError
from relscope.io import atomic_path, atomic_write_json, atomic_write_text
from relscope.training.checkpoint import checkpoint_dir
from relscope.training.lora import LoraSite, lora_parameters

GRAD_NORMS_FILE = "grad_norms.npz"


class GradNormRecorder(TrainerCallback):
    """The gradient norm of every LoRA site at every optimizer step, before clipping.

    Stored as `norms[step_index, layer, label]` with `steps` and `labels` alongside, where a
    label is a projection (q, k, v, o, gate, up, down) or a fused module (q+k+v). The norm of
    a site is that of its A and B gradients together; NaN marks sites without LoRA or frozen.
    The trainer calls `record` before it clips (see RelscopeTrainer._clip_grad_norm).
    """

    def __init__(self, base: torch.nn.Module, sites: list[LoraSite], n_layers: int) -> None:
        self.labels = list(dict.fromkeys(s.label for s in sites))
        self.n_layers = n_layers
        self.slots = [(s.layer, self.labels.index(s.label), lora_parameters(base, s)) for s in sites]
        self.steps: list[int] = []
        self.rows: list[np.ndarray] = []

    @torch.no_grad()
    def record(self, step: int) -> None:
        if self.steps and self.steps[-1] == step:
            return
        row = np.full((self.n_layers, len(self.labels)), np.nan, dtype=np.float32)
        squares = []
        for layer, col, params in self.slots:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                squares.append(((layer, col), torch.stack([g.float().pow(2).sum() for g in grads]).sum()))
        if squares:  # one device->host copy for the whole step
            values = torch.stack([s for _, s in squares]).sqrt().cpu().numpy()
            for ((layer, col), _), value in zip(squares, values):
                row[layer, col] = value
                if not np.isfinite(value):
                    raise TrainingError(f"step {step}: the gradient of layer {layer}'s {self.labels[col]} LoRA is "
                                        f"{value}; lower learning_rate or check the inputs (the last checkpoint is "
                                        "intact)")
        self.steps.append(step)
        self.rows.append(row)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.record(state.global_step + 1)  # a no-op when the trainer already recorded it before clipping

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.save(checkpoint_dir(args.output_dir, state.global_step) / GRAD_NORMS_FILE)
            self.save(Path(args.output_dir) / GRAD_NORMS_FILE)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.save(Path(args.output_dir) / GRAD_NORMS_FILE)

    def save(self, path: Path) -> None:
        norms = np.stack(self.rows) if self.rows else np.zeros((0, self.n_layers, len(self.labels)), np.float32)
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, norms=norms, steps=np.array(self.steps, dtype=np.int64), labels=np.array(self.labels))

    def resume_from(self, checkpoint: Path, step: int) -> None:
        """Continue the array of an interrupted run: the checkpoint's rows up to its step."""
        path = checkpoint / GRAD_NORMS_FILE
        if path.is_file():
            saved = load_grad_norms(path)
            keep = saved["steps"] <= step
            self.steps = saved["steps"][keep].tolist()
            self.rows = list(saved["norms"][keep])


def load_grad_norms(path: str | Path) -> dict[str, np.ndarray]:
    """{"norms": (steps, layers, labels), "steps": (steps,), "labels": (labels,)}"""
    with np.load(path) as data:
        return {key: data[key] for key in ("norms", "steps", "labels")}


class JsonlLogger(TrainerCallback):
    """Every Trainer log record as one JSON line in log.jsonl (main process only, flushed at once)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def trim_log(path: Path, step: int) -> None:
    """Drop records past `step` (written after the checkpoint a resumed run starts from)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if _record_step(line) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _record_step(line: str) -> float:
    """A record's step; a line cut short by a kill mid-write counts as past any checkpoint (dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return float("inf")


class DevEvaluator(TrainerCallback):
    """Rerank a dev run at every checkpoint with the `relscope rerank` machinery; log and store the metrics."""

    def __init__(self, trainer, reranker, dataset, top_k: int, measures) -> None:
        self.trainer = trainer
        self.reranker = reranker
        self.dataset = dataset
        self.top_k = top_k
        self.measures = measures

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from relscope.evaluation.metrics import evaluate_run
        from relscope.evaluation.rerank import rerank

        module = self.trainer.model
        was_training = module.training
        module.eval()
        result = rerank(self.reranker, self.dataset, self.top_k)
        module.train(was_training)
        mean, _ = evaluate_run(self.dataset.qrels, result.run, self.measures)
        atomic_write_json(checkpoint_dir(args.output_dir, state.global_step) / "dev_metrics.json",
                          {"step": state.global_step, "top_k": self.top_k, **mean})
        self.trainer.log({f"dev/{name}": value for name, value in mean.items()})
