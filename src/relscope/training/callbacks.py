"""Trainer callbacks: per-layer gradient norms, a JSONL log, and dev reranking at each checkpoint; and the
validating readers of what they wrote (grad_norms.npz, log.jsonl)."""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import TrainerCallback

from relscope.errors import DataError, TrainingError
from relscope.io import atomic_path, atomic_write_json, atomic_write_text, open_input, read_input_bytes
from relscope.models.lora import LoraSite, lora_parameters
from relscope.training.checkpoint import DEV_METRICS_FILE, GRAD_NORMS_FILE
from relscope.training.data import TARGETS

if TYPE_CHECKING:
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

    from relscope.data.dataset import RerankDataset
    from relscope.evaluation.rerank import Reranker

__all__ = ["CheckpointFiles", "DevEvaluator", "GRAD_NORMS_FILE", "GradNormRecorder", "HeldOutAccuracy",
           "JsonlLogger", "load_grad_norms", "read_log", "SaveAtSteps", "trim_log"]


class CheckpointFiles:
    """A callback with files of its own in every checkpoint. RelscopeTrainer writes them (and lists them in
    relscope.json) before the Trainer writes trainer_state.json, so a checkpoint is never complete without them."""

    files: tuple[str, ...] = ()

    def write_checkpoint_files(self, folder: Path, step: int) -> None:
        """Write this callback's `files` into checkpoint `folder` (saved at optimizer step `step`)."""
        raise NotImplementedError


class GradNormRecorder(TrainerCallback, CheckpointFiles):
    """The gradient norm of every LoRA site at every optimizer step, before clipping.

    Stored as `norms[step_index, layer, label]` with `steps` and `labels` alongside, where a
    label is a projection (q, k, v, o, gate, up, down) or a fused module (q+k+v). The norm of
    a site is that of its A and B gradients together; NaN marks sites without LoRA or frozen.
    `tensor_means[step_index, layer, label]` is the mean of the site's per-tensor norms (A's, B's): study 001's code
    averages those per layer, where its text defines the layer's norm as the root of the summed squares.
    `head_norms[step_index]` is the gradient norm of a trained head (the linear or two-logit head; NaN for answer
    heads), beside the layers' as study 001 reports its classifier head's.
    The trainer calls `record` before it clips (see RelscopeTrainer._clip_grad_norm).
    """

    files = (GRAD_NORMS_FILE,)

    def __init__(self, base: torch.nn.Module, sites: list[LoraSite], n_layers: int,
                 head: torch.nn.Module | None = None) -> None:
        self.head_params = [p for p in head.parameters() if p.requires_grad] if head is not None else []
        self.head_rows: list[float] = []
        self.labels = list(dict.fromkeys(s.label for s in sites))
        self.n_layers = n_layers
        self.slots = [(s.layer, self.labels.index(s.label), lora_parameters(base, s)) for s in sites]
        self.steps: list[int] = []
        self.rows: list[np.ndarray] = []
        self.tensor_rows: list[np.ndarray] = []

    @torch.no_grad()
    def record(self, step: int) -> None:
        """Store this step's gradient norm per site (once per step); a non-finite one stops training."""
        if self.steps and self.steps[-1] == step:
            return
        row = np.full((self.n_layers, len(self.labels)), np.nan, dtype=np.float32)
        tensor_row = row.copy()
        squares = []
        for layer, col, params in self.slots:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                per_tensor = torch.stack([g.float().pow(2).sum() for g in grads])
                squares.append(((layer, col), torch.stack([per_tensor.sum(), per_tensor.sqrt().mean()])))
        head = [p.grad for p in self.head_params if p.grad is not None]
        if head:  # a trained head's norm rides the same copy (its second entry is unused)
            head_square = torch.stack([g.float().pow(2).sum() for g in head]).sum()
            squares.append((None, torch.stack([head_square, head_square])))
        head_norm = float("nan")
        if squares:  # one device->host copy for the whole step
            values = torch.stack([s for _, s in squares]).cpu().numpy()
            for (site, _), (square, tensor_mean) in zip(squares, values):
                if site is None:
                    head_norm = float(np.sqrt(square))
                    continue
                layer, col = site
                value = np.sqrt(square)
                row[layer, col], tensor_row[layer, col] = value, tensor_mean
                if not np.isfinite(value):
                    raise TrainingError(f"step {step}: the gradient of layer {layer}'s {self.labels[col]} LoRA is "
                                        f"{value}; lower learning_rate or check the inputs (the last checkpoint is "
                                        "intact)")
        self.head_rows.append(head_norm)
        self.steps.append(step)
        self.rows.append(row)
        self.tensor_rows.append(tensor_row)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        """Record the step's norms when the trainer did not already (it records before clipping)."""
        self.record(state.global_step + 1)  # a no-op when the trainer already recorded it before clipping

    def write_checkpoint_files(self, folder: Path, step: int) -> None:
        """The norms so far, into the checkpoint and the run folder (for `relscope dynamics` mid-run)."""
        self.save(folder / GRAD_NORMS_FILE)
        self.save(folder.parent / GRAD_NORMS_FILE)  # the run's array so far, for `relscope dynamics` mid-run

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        """The whole run's norms into the run folder (main process only)."""
        if state.is_world_process_zero:
            self.save(Path(args.output_dir) / GRAD_NORMS_FILE)

    def save(self, path: Path) -> None:
        """The norms, steps and labels as one .npz that `load_grad_norms` reads back."""
        empty = np.zeros((0, self.n_layers, len(self.labels)), np.float32)
        norms = np.stack(self.rows) if self.rows else empty
        tensor_means = np.stack(self.tensor_rows) if self.tensor_rows else empty
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, norms=norms, steps=np.array(self.steps, dtype=np.int64), labels=np.array(self.labels),
                     tensor_means=tensor_means, head_norms=np.array(self.head_rows, dtype=np.float32))

    def resume_from(self, checkpoint: Path, step: int) -> None:
        """Continue the array of an interrupted run: the checkpoint's rows up to its step."""
        path = checkpoint / GRAD_NORMS_FILE
        if path.is_file():
            saved = load_grad_norms(path)
            labels = saved["labels"].tolist()
            if saved["norms"].shape[1] != self.n_layers or labels != self.labels:
                raise DataError(f"{path}: holds {saved['norms'].shape[1]} layers x {labels}, not this run's "
                                f"{self.n_layers} x {self.labels}; it belongs to another run: delete {checkpoint} to "
                                "resume from the checkpoint before it, or pass --no-resume")
            keep = saved["steps"] <= step
            self.steps = saved["steps"][keep].tolist()
            self.rows = list(saved["norms"][keep])
            # an older run's file has no per-tensor means: NaN rows, so the two arrays stay aligned
            self.tensor_rows = list(saved.get("tensor_means", np.full_like(saved["norms"], np.nan))[keep])
            self.head_rows = saved.get("head_norms", np.full(len(saved["steps"]), np.nan))[keep].tolist()


def load_grad_norms(path: str | Path) -> dict[str, np.ndarray]:
    """{"norms": (steps, layers, labels), "steps": (steps,), "labels": (labels,)}, checked: a truncated, damaged or
    hand-edited file is one error naming it and the fix."""
    path = Path(path)
    fix = ("copy it again from the training run, or delete it (relscope dynamics then leaves the gradient figures "
           "out; a checkpoint without it is incomplete, so a resume starts from the one before)")
    try:
        with open_input(path, "gradient-norm") as handle:
            data = np.load(handle, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: holds one array, not the .npz of relscope train; {fix}")
            with data:
                arrays = {key: data[key] for key in ("norms", "steps", "labels")}
                for key in ("tensor_means", "head_norms"):  # written since issue 18
                    if key in data.files:
                        arrays[key] = data[key]
    except KeyError as err:
        raise DataError(f"{path}: has no array {err}; {fix}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as err:
        raise DataError(f"{path}: damaged or not an .npz file ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:120] if str(err) else 'truncated'}); {fix}") from None
    problem = _grad_norms_problem(arrays["norms"], arrays["steps"], arrays["labels"])
    if problem is None and "tensor_means" in arrays:
        problem = _grad_norms_problem(arrays["tensor_means"], arrays["steps"], arrays["labels"])
    if problem is None and "head_norms" in arrays and arrays["head_norms"].shape != arrays["steps"].shape:
        problem = f"head_norms must hold one number per step ({arrays['steps'].shape[0]})"
    if problem:
        raise DataError(f"{path}: {problem}; {fix}")
    return arrays


def _grad_norms_problem(norms: np.ndarray, steps: np.ndarray, labels: np.ndarray) -> str | None:
    if norms.ndim != 3 or norms.dtype.kind != "f":
        return f"norms must be a (steps, layers, modules) float array, got {norms.dtype} of shape {norms.shape}"
    if steps.shape != norms.shape[:1] or (steps.size and steps.dtype.kind not in "iu"):
        return f"steps must hold one integer per row of norms ({norms.shape[0]}), got {steps.dtype} {steps.shape}"
    if labels.shape != norms.shape[2:] or (labels.size and labels.dtype.kind != "U"):
        return f"labels must name each of the {norms.shape[2]} modules, got {labels.dtype} {labels.shape}"
    if steps.size and (steps[0] < 1 or np.any(np.diff(steps) <= 0)):
        return "steps must start at 1 or later and increase"
    if np.isinf(norms).any() or (norms[~np.isnan(norms)] < 0).any():
        return "norms must be non-negative numbers (NaN where a site has no LoRA)"
    return None


LOG_FILE = "log.jsonl"  # one JSON record per logged step, in the run folder


class HeldOutAccuracy(TrainerCallback):
    """Study 001's eval accuracy: the share of held-out (positive, negative) pairs the model orders right (pairwise
    prompts: the share of A-or-B questions answered right), chance 1/2 whatever the number of negatives, at step 0
    and every `every` steps, logged as eval_accuracy. The held-out groups' draws are fixed (epoch 0), so every point
    of the curve scores the same prompts."""

    def __init__(self, trainer: Trainer, batches: list[dict[str, torch.Tensor]], prompts_per_group: int,
                 every: int) -> None:
        self.trainer, self.batches, self.prompts_per_group, self.every = trainer, batches, prompts_per_group, every

    @torch.no_grad()
    def accuracy(self) -> float:
        """The held-out group accuracy of the model as it is now (dropout off, the training's autocast)."""
        model = self.trainer.model
        was_training = model.training
        model.eval()
        correct = groups = 0
        try:
            for batch in self.batches:
                with self.trainer.autocast_smart_context_manager():
                    scores = model(**{k: v.to(self.trainer.args.device) for k, v in batch.items()
                                     if k not in TARGETS})
                per_group = self.trainer.objective.pair_accuracy(scores.float().view(-1, self.prompts_per_group))
                correct, groups = correct + float(per_group.sum()), groups + len(per_group)
        finally:
            model.train(was_training)
        return correct / groups

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: object) -> None:
        """Step 0: the untrained model's accuracy (not again on a resume)."""
        if state.global_step == 0:
            self.trainer.log({"eval_accuracy": round(self.accuracy(), 4)})

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: object) -> None:
        """Every `every` steps and at the last."""
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.trainer.log({"eval_accuracy": round(self.accuracy(), 4)})


class SaveAtSteps(TrainerCallback):
    """Checkpoints at exactly the steps given (and at the last step), where the Trainer's save_steps is a period."""

    def __init__(self, steps: tuple[int, ...], last: int) -> None:
        self.steps = {*steps, last}

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: object) -> TrainerControl:
        """Ask for a save at the listed steps (the Trainer's own schedule is off: save_strategy "no")."""
        control.should_save = state.global_step in self.steps
        return control


class JsonlLogger(TrainerCallback):
    """Every Trainer log record as one JSON line in log.jsonl (main process only, flushed at once)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        """Append the record with its step to log.jsonl (main process only)."""
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def trim_log(path: Path, step: int) -> None:
    """Drop records past `step` (written after the checkpoint a resumed run starts from), and a last line a kill
    cut short; any other damage is an error naming the line."""
    if not path.exists():
        return
    keep = [record for record in read_log(path, drop_cut_last=True) if record["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in keep))


LOG_NUMBERS = ("loss", "accuracy", "p_correct", "learning_rate", "grad_norm", "epoch", "eval_accuracy",
               "step_seconds", "tokens", "padded_tokens", "rss_gib", "peak_rss_gib")


def read_log(path: Path, drop_cut_last: bool = False) -> list[dict]:
    """log.jsonl's records, checked line by line: each a JSON object with an integer step and numbers where the
    Trainer writes numbers. A damaged line is one error naming file:line and the fix. `drop_cut_last`: a last
    line without its newline (a kill in mid-write) is dropped instead (resume)."""
    data = read_input_bytes(path, "training log")
    lines = data.split(b"\n")
    cut_last = lines.pop() if lines else b""  # b"" when the file ends with a newline, as every complete log does
    records = [_log_record(path, number, raw) for number, raw in enumerate(lines, start=1) if raw.strip()]
    if cut_last.strip() and not drop_cut_last:
        raise DataError(f"{path}:{len(lines) + 1}: cut short (a run killed while writing it?); resume the run "
                        "(which trims the log) or delete that line")
    return records


def _log_record(path: Path, number: int, raw: bytes) -> dict:
    at = f"{path}:{number}"
    fix = ("the log is damaged or was edited by hand: repair or delete that line (or start the run over with "
           "relscope train --no-resume)")
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{at}: not UTF-8 text; {fix}") from None
    except (json.JSONDecodeError, RecursionError):
        raise DataError(f"{at}: not a JSON record; {fix}") from None
    if not isinstance(record, dict):
        raise DataError(f"{at}: expected a JSON object, got {type(record).__name__}; {fix}")
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise DataError(f"{at}: step must be a non-negative integer, got {str(step)[:40]!r}; {fix}")
    for key in LOG_NUMBERS:
        value = record.get(key)
        if key in record and (not isinstance(value, (int, float)) or isinstance(value, bool)
                              or not math.isfinite(value)):
            raise DataError(f"{at}: {key} must be a finite number, got {str(value)[:40]!r}; {fix}")
    return record


class DevEvaluator(TrainerCallback, CheckpointFiles):
    """Rerank a dev run at every checkpoint with the `relscope rerank` machinery; log and store the metrics."""

    files = (DEV_METRICS_FILE,)

    def __init__(self, trainer: Trainer, reranker: Reranker, dataset: RerankDataset, top_k: int,
                 measures: Sequence[str]) -> None:
        self.trainer = trainer
        self.reranker = reranker
        self.dataset = dataset
        self.top_k = top_k
        self.measures = measures

    def write_checkpoint_files(self, folder: Path, step: int) -> None:
        """Rerank the dev run with the model as trained so far; its metrics into the checkpoint and the log."""
        from relscope.evaluation.metrics import evaluate_run
        from relscope.evaluation.rerank import rerank

        module = self.trainer.model
        was_training = module.training
        module.eval()
        result = rerank(self.reranker, self.dataset, self.top_k)
        module.train(was_training)
        mean, _ = evaluate_run(self.dataset.qrels, result.run, self.measures)
        atomic_write_json(folder / DEV_METRICS_FILE, {"step": step, "top_k": self.top_k, **mean})
        self.trainer.log({f"dev/{name}": value for name, value in mean.items()})
