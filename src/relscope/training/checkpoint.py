"""What a checkpoint holds besides the trainer state, and how to load it back for reranking.

checkpoint-<step>/
    adapter_model.safetensors, adapter_config.json   the LoRA weights (PEFT format)
    head.safetensors                                 a trained head (the linear head only)
    relscope.json                                    base model, objective, template, head, max_length and
                                                     the per-checkpoint files below that complete it
    grad_norms.npz, dev_metrics.json                 written by the callbacks, before trainer_state.json
    optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json   HF Trainer (trainer_state last)

A checkpoint is complete when trainer_state.json and every file its relscope.json lists are there: a kill between
them leaves it incomplete, and a resume starts from the one before. Every file relscope reads back here is checked
on load; a damaged or hand-edited one is one error naming it and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from relscope.config import short
from relscope.errors import ConfigError, DataError, ModelError
from relscope.io import atomic_write_json, read_input_text

log = logging.getLogger(__name__)

META_FILE = "relscope.json"
HEAD_FILE = "head.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
STATE_FILE = "trainer_state.json"  # the Trainer writes it last: with relscope's files below, a complete checkpoint
GRAD_NORMS_FILE = "grad_norms.npz"
DEV_METRICS_FILE = "dev_metrics.json"
CHECKPOINT_NAME = re.compile(r"checkpoint-[0-9]+")


def save_weights(module, output_dir: str | Path, meta: dict) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.peft_model.save_pretrained(out)
    head_state = {k: v.detach().contiguous().cpu() for k, v in module.trainable_head_state().items()}
    if head_state:
        save_file(head_state, out / HEAD_FILE)
    atomic_write_json(out / META_FILE, meta)


def load_weights(peft_model, head, checkpoint: str | Path) -> None:
    """Load a checkpoint's adapter and head weights into an already built model of the same run
    (resume, or stepping through a run's checkpoints without reloading the base)."""
    from peft import set_peft_model_state_dict

    folder = Path(checkpoint)
    adapter = folder / ADAPTER_FILE
    if not adapter.is_file():
        raise ModelError(f"{folder}: no {ADAPTER_FILE}; not a relscope checkpoint")
    device = str(next(peft_model.parameters()).device)
    set_peft_model_state_dict(peft_model, read_tensors(adapter, device))
    load_head(head, folder, device)


def read_tensors(path: Path, device: str) -> dict:
    """A safetensors file, or an error naming it when it is truncated or not safetensors at all."""
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError) as err:
        raise ModelError(_damaged(path, err)) from None


def load_head(head, folder: Path, device: str) -> None:
    """Load `folder`'s head.safetensors into `head` strictly: every trained weight there, nothing else, same shapes.

    Answer heads have no weights of their own (they read the model's unembedding, keys `unembedding.*`), so they
    need no file and must not be given one; a linear head needs its file, or it would score with random weights.
    """
    path = folder / HEAD_FILE
    own = {k: v for k, v in head.state_dict().items() if not k.startswith("unembedding.")}
    kind = type(head).__name__
    if not path.is_file():
        if own:
            raise ModelError(f"{path}: missing; the {kind} scores with trained weights ({', '.join(own)}) that only "
                             "this file holds: copy the checkpoint folder again, complete (an adapter without it "
                             "needs a template with answer words, e.g. --template yes_no)")
        return
    state = read_tensors(path, device)
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ModelError(f"{path}: does not fit the checkpoint's {kind} (missing: {_keys(missing)}; unexpected: "
                         f"{_keys(unexpected)}); it belongs to another head or was edited: copy the checkpoint again")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise ModelError(f"{path}: wrong shape ({'; '.join(wrong[:3])} expected); it was trained on another base "
                         "model: give the base model this checkpoint was trained on, or copy the checkpoint again")
    if not all(bool(t.isfinite().all()) for t in state.values() if t.is_floating_point()):
        raise ModelError(f"{path}: holds non-finite weights; resume the training run from an earlier checkpoint")
    result = head.load_state_dict(state, strict=False)  # strict would demand the shared unembedding too
    assert not result.unexpected_keys and all(k.startswith("unembedding.") for k in result.missing_keys)


def _keys(keys: list[str]) -> str:
    shown = ", ".join(k[:60] for k in keys[:5])
    return (shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")) if keys else "none"


def _damaged(path: Path, err: Exception) -> str:
    return (f"{path}: damaged or not a safetensors file ({err}); copy it again, or resume the training run from an "
            "earlier checkpoint")


def read_meta(checkpoint: str | Path) -> dict:
    """A checkpoint's relscope.json, checked key by key: damaged or hand-edited is one error naming it and the fix."""
    path = Path(checkpoint) / META_FILE
    if not path.is_file():
        raise ModelError(f"{checkpoint}: no {META_FILE}; give a checkpoint-<step> folder written by relscope train")
    fix = "it is damaged or was edited by hand: copy the checkpoint again, or pick another checkpoint"
    meta = read_json(path, "checkpoint metadata", fix)
    problem = _meta_problem(meta)
    if problem:
        raise DataError(f"{path}: {problem}; {fix}")
    return meta


def resolve_max_length(explicit: int | None, adapter: str | Path | None, fallback: int) -> int:
    """The prompt length to score with: the user's, else the checkpoint's own (what it was trained and dev-scored
    with, from relscope.json), else the command's default (a base model, or a PEFT adapter relscope did not train)."""
    if explicit is not None:
        if not _is_int(explicit) or explicit < 8:
            raise ConfigError(f"--max-length (max_length) {short(explicit)}: must be a whole number of at least 8 "
                              "tokens")
        return explicit
    if adapter is not None and (Path(adapter) / META_FILE).is_file():
        stored = read_meta(adapter).get("max_length")
        if stored is not None:
            return stored
    return fallback


def read_json(path: Path, what: str, fix: str) -> Any:
    """A JSON file relscope wrote, or one error naming it (unreadable, not UTF-8, not JSON) and `fix`."""
    text = read_input_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); {fix}") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to be relscope's; {fix}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any, finite: bool = True) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (not finite or math.isfinite(value)))


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a relscope.json's contents, or None."""
    from relscope.models.heads import HEADS
    from relscope.prompts.templates import TEMPLATES

    if not isinstance(meta, dict):
        return f"expected a JSON object with the keys model and template, got {type(meta).__name__}"
    for key in ("model", "template"):
        if not isinstance(meta.get(key), str) or not meta[key].strip():
            return f"key {key!r} must be a non-empty string, got {short(meta.get(key))}"
    if meta["template"] not in TEMPLATES:
        return f"template {short(meta['template'])} is not one of {', '.join(TEMPLATES.names())}"
    head = meta.get("head")
    if head is not None and (not isinstance(head, str) or head not in HEADS):
        return f"head {short(head)} is not one of {', '.join(HEADS.names())}"
    if "max_length" in meta and not (_is_int(meta["max_length"]) and meta["max_length"] >= 8):
        return f"max_length must be an integer of at least 8, got {short(meta['max_length'])}"
    for key in ("base", "lora"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"key {key!r} must be a JSON object, got {short(meta[key])}"
    answers = meta.get("answer_ids")
    if answers is not None and not (isinstance(answers, list) and len(answers) == 2 and all(map(_is_int, answers))):
        return f"answer_ids must be a list of two token ids, got {short(answers)}"
    if meta.get("objective") is not None and not isinstance(meta["objective"], str):
        return f"objective must be a string, got {short(meta['objective'])}"
    files = meta.get("checkpoint_files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) and re.fullmatch(r"[\w.-]+", f) for f in files):
        return f"checkpoint_files must be a list of file names, got {short(files)}"
    return None


def base_fingerprint(model_config) -> dict:
    """What identifies a base model's shape, stored with each checkpoint so a foreign base is refused
    even when PEFT could load the adapter (same module names and sizes, other weights)."""
    keys = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return {k: getattr(text, k, None) for k in keys}


def check_base(folder: Path, meta: dict, model_config, name: str) -> None:
    expected, found = meta.get("base"), base_fingerprint(model_config)
    if expected and expected != found:
        differ = ", ".join(f"{k} {expected[k]} vs {found[k]}" for k in expected if expected[k] != found.get(k))
        raise ModelError(f"{folder}: trained on {meta['model']!r}, which differs from {name!r} ({differ}); "
                         "give the base model it was trained on")


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"checkpoint-{step}"


def checkpoint_step(folder: Path) -> int:
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
    if state.get("global_step") != step or not _is_int(state.get("global_step")):
        return f"global_step is {short(state.get('global_step'))}, not the folder's step {step}"
    checks = {
        "epoch": _is_number, "total_flos": _is_number, "max_steps": _is_int, "num_train_epochs": _is_int,
        "num_input_tokens_seen": _is_int, "logging_steps": _is_number, "eval_steps": _is_number,
        "save_steps": _is_number, "train_batch_size": lambda v: v is None or _is_int(v),
        "best_metric": lambda v: v is None or _is_number(v, finite=False),
        "best_global_step": lambda v: v is None or _is_int(v),
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


def load_trained(checkpoint: str | Path, dtype: str = "auto", device: str | None = None, merge: bool = False,
                 model: str | None = None, template: str | None = None, head: str | None = None):
    """(LoadedModel whose model is the PEFT-wrapped LM, the head module, the meta).

    A relscope checkpoint names its base model, template and head in relscope.json. Any other
    PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) loads too: the base
    comes from `model` or its adapter_config, the template from `template` (default yes_no).
    merge=True folds W + BA into the base weights (PEFT merge_and_unload): the same scores
    without the adapter's extra matmuls, for reranking; analyses that switch LoRA off keep it unmerged.
    """
    from peft import PeftModel

    from relscope.models.heads import build_head, default_head
    from relscope.models.load import load_model
    from relscope.prompts.templates import get_template
    from relscope.prompts.tokenize import PromptBuilder

    folder = Path(checkpoint)
    meta = read_meta(folder) if (folder / META_FILE).is_file() else _external_meta(folder, model, template, head)
    loaded = load_model(model or meta["model"], dtype=dtype, device=device)
    check_base(folder, meta, loaded.model.config, loaded.name)
    try:
        loaded.model = PeftModel.from_pretrained(loaded.model, str(folder)).eval()
    except SafetensorError as err:
        raise ModelError(_damaged(folder / ADAPTER_FILE, err)) from None
    except (RuntimeError, ValueError, KeyError) as err:  # size mismatch, target modules not found
        raise ModelError(f"{folder}: this adapter does not fit {loaded.name!r} (made for "
                         f"{_adapter_base(folder)!r}?): {str(err).splitlines()[0][:300]}. "
                         "Give the base model it was trained on") from None
    if merge:
        loaded.model = loaded.model.merge_and_unload()
    builder = PromptBuilder(loaded.tokenizer, get_template(meta["template"]), meta.get("max_length", 512))
    check_answer_ids(folder, meta, builder)
    head_module = build_head(meta.get("head") or default_head(builder.template), loaded.model, builder)
    load_head(head_module, folder, str(loaded.device))
    return loaded, head_module, meta


def check_answer_ids(folder: Path, meta: dict, builder) -> None:
    """The answer tokens this relscope reads must be those the checkpoint was trained to read: a change in how they
    are chosen (a tokenizer, or relscope's rule) would otherwise score the checkpoint with other logits, silently."""
    if not builder.template.answers:
        return
    stored = meta.get("answer_ids")
    if stored is None:
        if not meta.get("external") and not builder.uses_chat:
            log.warning("%s: trained before checkpoints stored their answer tokens; its plain prompt is read at the "
                        "space-led answer tokens %s (relscope before issue 16 read the bare ones)", folder,
                        [builder.tokenizer.decode([i]) for i in builder.answer_ids])
        return
    if tuple(stored) != tuple(builder.answer_ids):
        raise ModelError(f"{folder}: trained to read answer tokens {stored}, but this tokenizer and relscope read "
                         f"{list(builder.answer_ids)}; score it with the tokenizer it was trained with, or retrain")


def _adapter_base(folder: Path) -> str | None:
    config = folder / "adapter_config.json"
    if not config.is_file():
        return None
    data = read_json(config, "adapter config", "copy the adapter again")
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    return base if isinstance(base, str) and base.strip() else None


def _external_meta(folder: Path, model: str | None, template: str | None, head: str | None) -> dict:
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{folder}: neither a relscope checkpoint ({META_FILE}) nor a PEFT adapter "
                         "(adapter_config.json); give a checkpoint-<step>/ folder or a PEFT adapter folder")
    base = model or _adapter_base(folder)
    if not base:
        raise ModelError(f"{folder}/adapter_config.json names no base model; pass the base model explicitly")
    return {"model": base, "template": template or "yes_no", "head": head, "external": True}
