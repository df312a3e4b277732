"""HF Trainer, taught three things: the group loss, relscope checkpoints, and group metrics in the logs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import Trainer

from relscope.errors import TrainingError, overflow_hint
from relscope.models.adapters import load_weights
from relscope.training.callbacks import CheckpointFiles, GradNormRecorder
from relscope.training.checkpoint import save_weights
from relscope.training.data import EpochSeededSampler
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

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return EpochSeededSampler(len(dataset), self.args.data_seed or self.args.seed)

    def compute_loss(self, model: RerankerModule, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: int | torch.Tensor | None = None
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The objective's loss over the batch's groups (and the scores); a non-finite loss stops training."""
        scores = model(**inputs).view(-1, self.prompts_per_group)
        stats = self.objective.loss(scores)
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
        """Log `logs`, a training record with the group accuracy and mean P(correct) since the last one added."""
        if "loss" in logs:  # a training record: add group accuracy and mean P(correct), over all processes
            sums = self.accelerator.reduce(self._sums.to(self.args.device), reduction="sum").cpu()
            if sums[0] > 0:
                logs["accuracy"] = round(float(sums[1] / sums[0]), 4)
                logs["p_correct"] = round(float(sums[2] / sums[0]), 4)
            self._sums.zero_()
        super().log(logs, start_time)

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
