"""A training run's checkpoints: writing relscope's files into them, completeness, the Trainer's state, resume.

checkpoint-<step>/
    adapter, head and relscope.json                  see relscope.models.adapters (they are what a reranker loads)
    grad_norms.npz, dev_metrics.json                 written by the callbacks, before trainer_state.json
    optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json   HF Trainer (trainer_state last)

A checkpoint is complete when trainer_state.json and every file its relscope.json lists are there: a kill between
them leaves it incomplete, and a resume starts from the one before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file

from relscope.errors import DataError, short
from relscope.io import atomic_write_json
from relscope.models.adapters import ADAPTER_FILE, HEAD_FILE, META_FILE, is_int, is_number, read_json, read_meta

if TYPE_CHECKING:
    from relscope.training.module import RerankerModule

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # the Trainer writes it last: with relscope's files below, a complete checkpoint
GRAD_NORMS_FILE = "grad_norms.npz"
DEV_METRICS_FILE = "dev_metrics.json"
CHECKPOINT_NAME = re.compile(r"checkpoint-[0-9]+")


def save_weights(module: RerankerModule, output_dir: str | Path, meta: dict) -> None:
    """The LoRA adapter, a trained head's weights and relscope.json into `output_dir`: what a reranker loads."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.peft_model.save_pretrained(out)
    head_state = {k: v.detach().contiguous().cpu() for k, v in module.trainable_head_state().items()}
    if head_state:
        save_file(head_state, out / HEAD_FILE)
    atomic_write_json(out / META_FILE, meta)


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    """The folder of the checkpoint saved at optimizer step `step` (the Trainer's naming)."""
    return Path(out_dir) / f"checkpoint-{step}"


def checkpoint_step(folder: Path) -> int:
    """The optimizer step a checkpoint-<step> folder was saved at."""
    return int(folder.name.split("-")[-1])


def complete_checkpoints(out_dir: str | Path) -> list[Path]:
    """Every complete checkpoint-<step>/ in out_dir (see is_complete), oldest first."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted((p for p in found if is_complete(p)), key=checkpoint_step)


def is_complete(folder: Path) -> bool:
    """trainer_state.json (checked), relscope.json, the adapter and every file relscope.json lists (gradient norms,
    dev metrics). relscope writes its files before the Trainer's state, so a kill in between leaves the checkpoint
    incomplete and a resume redoes it, instead of resuming past a gap."""
    if not all((folder / name).is_file() for name in (STATE_FILE, META_FILE, ADAPTER_FILE)):
        return False
    try:
        json.loads((folder / STATE_FILE).read_bytes())
    except (ValueError, RecursionError):  # the Trainer writes it in place: a kill mid-write leaves it cut short
        log.warning("%s: trainer_state.json is cut short (a run killed while saving): the checkpoint is "
                    "incomplete; a resume starts from the one before", folder)
        return False
    read_trainer_state(folder)
    # Checkpoints written before relscope.json listed its files always had gradient norms.
    return all((folder / name).is_file() for name in read_meta(folder).get("checkpoint_files", [GRAD_NORMS_FILE]))


def read_trainer_state(folder: Path) -> dict:
    """A checkpoint's trainer_state.json as a resume reads it, checked: damaged or hand-edited is one error."""
    path = folder / STATE_FILE
    fix = (f"it is damaged or was edited by hand: delete {folder} (a resume then starts from the checkpoint "
           "before it) or copy the run again")
    state = read_json(path, "trainer state", fix)
    problem = _state_problem(state, checkpoint_step(folder))
    if problem:
        raise DataError(f"{path}: {problem}; {fix}")
    return state


def _state_problem(state: Any, step: int) -> str | None:
    """What a resume would trip over in trainer_state.json (unknown keys, wrong types, another step), or None."""
    from transformers.trainer_callback import TrainerState

    if not isinstance(state, dict):
        return f"expected a JSON object, got {type(state).__name__}"
    unknown = sorted(set(state) - {f.name for f in dataclasses.fields(TrainerState)})
    if unknown:
        return f"unknown key {short(unknown[0])}"
    if state.get("global_step") != step or not is_int(state.get("global_step")):
        return f"global_step is {short(state.get('global_step'))}, not the folder's step {step}"
    checks = {
        "epoch": is_number, "total_flos": is_number, "max_steps": is_int, "num_train_epochs": is_int,
        "num_input_tokens_seen": is_int, "logging_steps": is_number, "eval_steps": is_number,
        "save_steps": is_number, "train_batch_size": lambda v: v is None or is_int(v),
        "best_metric": lambda v: v is None or is_number(v, finite=False),
        "best_global_step": lambda v: v is None or is_int(v),
        "log_history": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
        "stateful_callbacks": lambda v: v is None or isinstance(v, dict),
        "trial_params": lambda v: v is None or isinstance(v, dict),
        **{k: lambda v: v is None or isinstance(v, str) for k in ("best_model_checkpoint", "trial_name")},
        **{k: lambda v: isinstance(v, bool) for k in ("is_local_process_zero", "is_world_process_zero",
                                                       "is_hyper_param_search")},
    }
    wrong = next((k for k, ok in checks.items() if k in state and not ok(state[k])), None)
    return f"key {wrong!r} has the wrong type or value: {short(state[wrong])}" if wrong else None


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint-<step>/ in out_dir."""
    done = complete_checkpoints(out_dir)
    return done[-1] if done else None


