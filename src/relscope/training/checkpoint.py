"""What a checkpoint holds besides the trainer state, and how to load it back for reranking.

checkpoint-<step>/
    adapter_model.safetensors, adapter_config.json   the LoRA weights (PEFT format)
    head.safetensors                                 a trained head (the linear head only)
    relscope.json                                    base model, objective, template, head, max_length
    grad_norms.npz, dev_metrics.json                 written by the callbacks
    optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json   HF Trainer (trainer_state last)
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from relscope.errors import ModelError
from relscope.io import atomic_write_json

META_FILE = "relscope.json"
HEAD_FILE = "head.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
STATE_FILE = "trainer_state.json"  # the Trainer writes it last: its presence marks a complete checkpoint


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
    if (folder / HEAD_FILE).is_file():
        head.load_state_dict(read_tensors(folder / HEAD_FILE, device), strict=False)


def read_tensors(path: Path, device: str) -> dict:
    """A safetensors file, or an error naming it when it is truncated or not safetensors at all."""
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError) as err:
        raise ModelError(_damaged(path, err)) from None


def _damaged(path: Path, err: Exception) -> str:
    return (f"{path}: damaged or not a safetensors file ({err}); copy it again, or resume the training run from an "
            "earlier checkpoint")


def read_meta(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / META_FILE
    if not path.is_file():
        raise ModelError(f"{checkpoint}: no {META_FILE}; give a checkpoint-<step> folder written by relscope train")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: damaged ({err}); copy the checkpoint again or pick another") from None
    if not isinstance(meta, dict) or not {"model", "template"} <= meta.keys():
        raise ModelError(f"{path}: lacks the keys model and template; not written by relscope train")
    return meta


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
    """Every complete checkpoint-<step>/ (one with trainer_state.json) in out_dir, oldest first."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(done, key=checkpoint_step)


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
    head_module = build_head(meta.get("head") or default_head(builder.template), loaded.model, builder)
    if (folder / HEAD_FILE).is_file():
        head_module.load_state_dict(read_tensors(folder / HEAD_FILE, str(loaded.device)), strict=False)
    return loaded, head_module, meta


def _adapter_base(folder: Path) -> str | None:
    config = folder / "adapter_config.json"
    return json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") if config.is_file() else None


def _external_meta(folder: Path, model: str | None, template: str | None, head: str | None) -> dict:
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{folder}: neither a relscope checkpoint ({META_FILE}) nor a PEFT adapter "
                         "(adapter_config.json); give a checkpoint-<step>/ folder or a PEFT adapter folder")
    base = model or _adapter_base(folder)
    if not base:
        raise ModelError(f"{folder}/adapter_config.json names no base model; pass the base model explicitly")
    return {"model": base, "template": template or "yes_no", "head": head, "external": True}
