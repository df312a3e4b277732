"""HF Trainer, taught three things: the group loss, relscope checkpoints, and group metrics in the logs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import Trainer

from relscope.errors import TrainingError, overflow_hint
from relscope.models.adapters import load_weights
from relscope.training.callbacks import CheckpointFiles, GradNormRecorder
from relscope.training.checkpoint import save_weights
from relscope.training.data import TARGETS, EpochSeededSampler
from relscope.training.memory import peak_resident_gib, resident_gib
from relscope.training.objectives import Objective

if TYPE_CHECKING:
    from relscope.training.module import RerankerModule


class RelscopeTrainer(Trainer):
    """The Trainer with relscope's group loss, group metrics in its logs, and relscope checkpoints."""

    def __init__(self, *args, objective: Objective, prompts_per_group: int, meta: dict,
                 grad_recorder: GradNormRecorder | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.prompts_per_group = prompts_per_group
        self.meta = meta
        self.grad_recorder = grad_recorder
        self._sums = torch.zeros(3, dtype=torch.float64)  # groups, correct, p_correct since the last log
        self._tokens = [0, 0]  # real (attention-mask) and padded tokens fed since the last log, this process
        self._last_log: tuple[float, int] | None = None  # (wall time, optimizer step) of the last training record

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return EpochSeededSampler(len(dataset), self.args.data_seed or self.args.seed)

    def compute_loss(self, model: RerankerModule, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: int | torch.Tensor | None = None
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The objective's loss over the batch's groups (and the scores); a non-finite loss stops training."""
        grades, copies = inputs.get("grades"), inputs.get("copies")  # the graded objectives' targets: no model inputs
        scores = model(**{k: v for k, v in inputs.items() if k not in TARGETS}).view(-1, self.prompts_per_group)
        mask = inputs.get("attention_mask")
        if mask is not None and model.training:  # training steps only, never an evaluation's batches
            self._tokens[0] += int(mask.sum())
            self._tokens[1] += self.accelerator.unwrap_model(model).padded_tokens(mask, inputs["last"])
        stats = self.objective.loss(scores, grades, copies)
        if not torch.isfinite(stats.loss):
            raise TrainingError(f"step {self.state.global_step + 1}: the loss is {stats.loss.item()}"
                                f"{overflow_hint(next(model.parameters()).dtype)}"
                                "; otherwise lower learning_rate (the last checkpoint is intact)")
        self._sums += torch.tensor([len(scores), stats.correct.sum().item(), stats.p_correct.sum().item()],
                                   dtype=torch.float64)
        return (stats.loss, scores) if return_outputs else stats.loss

    def _clip_grad_norm(self, model):
        if self.grad_recorder is not None:  # record before clipping rescales the gradients
            self.grad_recorder.record(self.state.global_step + 1)
        return super()._clip_grad_norm(model)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Log `logs`; a training record gets the group accuracy and mean P(correct) since the last one, and the wall
        seconds per optimizer step and the real and padded tokens per step since then (this process's batches: with
        several processes, multiply by their number for the global step)."""
        if "loss" in logs:  # a training record: add group accuracy and mean P(correct), over all processes
            sums = self.accelerator.reduce(self._sums.to(self.args.device), reduction="sum").cpu()
            if sums[0] > 0:
                logs["accuracy"] = round(float(sums[1] / sums[0]), 4)
                logs["p_correct"] = round(float(sums[2] / sums[0]), 4)
            self._sums.zero_()
            logs.update(self._step_timing(start_time))
        super().log(logs, start_time)

    def _step_timing(self, start_time: float | None) -> dict[str, float]:
        """step_seconds: wall time per step since the last record (or the start of training: held-out and dev
        evaluations and checkpoint writes in between count, as they cost the run); tokens and padded_tokens: the
        real and padded prompt tokens per step (the gap is padding waste); rss_gib and peak_rss_gib: this process's
        resident memory now and at its most so far."""
        now, step = time.time(), self.state.global_step
        # before the first record: training's start, at the step it resumed from (the Trainer's own attribute)
        since, since_step = self._last_log or (start_time, getattr(self, "_initial_global_step", 0))
        self._last_log = (now, step)
        steps = step - since_step
        if since is None or steps <= 0:
            return {}
        real, padded = self._tokens
        self._tokens = [0, 0]
        rss = resident_gib()
        memory = {"peak_rss_gib": round(peak_resident_gib(rss), 3)}  # never below rss
        if rss is not None:
            memory["rss_gib"] = round(rss, 3)
        return {"step_seconds": round((now - since) / steps, 3), "tokens": round(real / steps),
                "padded_tokens": round(padded / steps), **memory}

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Adapter, head, meta and the callbacks' per-checkpoint files (the base model is never copied). The Trainer
        calls this first in a checkpoint and writes trainer_state.json last, so those files are never missing from
        a checkpoint that looks complete."""
        if not self.args.should_save:
            return
        folder = Path(output_dir or self.args.output_dir)
        writers = [c for c in self.callback_handler.callbacks if isinstance(c, CheckpointFiles)]
        files = sorted(name for writer in writers for name in writer.files)
        save_weights(self.model, folder, {**self.meta, "checkpoint_files": files})
        for writer in writers:
            writer.write_checkpoint_files(folder, self.state.global_step)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_weights(self.model.peft_model, self.model.head, resume_from_checkpoint)
