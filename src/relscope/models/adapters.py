"""Adapters on a base model: read a relscope checkpoint or any PEFT LoRA adapter, check it against the base, attach it.

A relscope checkpoint-<step>/ holds, besides the Trainer's state (see relscope.training.checkpoint):
    adapter_model.safetensors, adapter_config.json   the LoRA weights (PEFT format)
    head.safetensors                                 a trained head (the linear head only)
    relscope.json                                    base model, objective, template, head, max_length, answer
                                                     tokens and the per-checkpoint files that complete it

Every file read here is checked on load; a damaged or hand-edited one is one error naming it and the fix.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from relscope.errors import ConfigError, DataError, ModelError, short
from relscope.io import read_input_text

if TYPE_CHECKING:
    from torch import nn

    from relscope.models.heads import Head
    from relscope.models.load import LoadedModel
    from relscope.prompts.presets import RerankerPreset
    from relscope.prompts.tokenize import PromptBuilder

log = logging.getLogger(__name__)

META_FILE = "relscope.json"
HEAD_FILE = "head.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
LEGACY_ADAPTER_FILE = "adapter_model.bin"


def load_weights(peft_model: nn.Module, head: nn.Module, checkpoint: str | Path) -> None:
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


def load_head(head: nn.Module, folder: Path, device: str) -> None:
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
        if not is_int(explicit) or explicit < 8:
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


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON true would pass isinstance(value, int))."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any, finite: bool = True) -> bool:
    """An int or float that is not a bool, and finite unless `finite` is False."""
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
    if "max_length" in meta and not (is_int(meta["max_length"]) and meta["max_length"] >= 8):
        return f"max_length must be an integer of at least 8, got {short(meta['max_length'])}"
    for key in ("base", "lora"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"key {key!r} must be a JSON object, got {short(meta[key])}"
    answers = meta.get("answer_ids")
    if answers is not None and not (isinstance(answers, list) and len(answers) == 2 and all(map(is_int, answers))):
        return f"answer_ids must be a list of two token ids, got {short(answers)}"
    if meta.get("objective") is not None and not isinstance(meta["objective"], str):
        return f"objective must be a string, got {short(meta['objective'])}"
    files = meta.get("checkpoint_files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) and re.fullmatch(r"[\w.-]+", f) for f in files):
        return f"checkpoint_files must be a list of file names, got {short(files)}"
    return None


def base_fingerprint(model_config: Any) -> dict:
    """What identifies a base model's shape, stored with each checkpoint so a foreign base is refused
    even when PEFT could load the adapter (same module names and sizes, other weights)."""
    keys = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return {k: getattr(text, k, None) for k in keys}


def check_base(folder: Path, meta: dict, model_config: Any, name: str) -> None:
    """Refuse a checkpoint whose stored base fingerprint differs from the loaded base's."""
    expected, found = meta.get("base"), base_fingerprint(model_config)
    if expected and expected != found:
        differ = ", ".join(f"{k} {expected[k]} vs {found[k]}" for k in expected if expected[k] != found.get(k))
        raise ModelError(f"{folder}: trained on {meta['model']!r}, which differs from {name!r} ({differ}); "
                         "give the base model it was trained on")


def load_trained(checkpoint: str | Path, dtype: str = "auto", device: str | None = None, merge: bool = False,
                 model: str | None = None, template: str | None = None,
                 head: str | None = None) -> tuple[LoadedModel, Head, dict[str, Any]]:
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
                         f"{adapter_base(folder)!r}?): {str(err).splitlines()[0][:300]}. "
                         "Give the base model it was trained on") from None
    if merge:
        loaded.model = loaded.model.merge_and_unload()
    builder = PromptBuilder(loaded.tokenizer, get_template(meta["template"]), meta.get("max_length", 512))
    check_answer_ids(folder, meta, builder)
    head_module = build_head(meta.get("head") or default_head(builder.template), loaded.model, builder)
    classifier = external_classifier(folder, str(loaded.device)) if meta.get("external") else None
    if classifier is not None and meta.get("head", "linear") == "linear":
        load_classifier(head_module, classifier, folder)
    else:
        load_head(head_module, folder, str(loaded.device))
    return loaded, head_module, meta


def check_answer_ids(folder: Path, meta: dict, builder: PromptBuilder) -> None:
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


def load_preset_adapter(model: str, preset: RerankerPreset, dtype: str = "auto", device: str | None = None,
                        merge: bool = False, head: str | None = None) -> tuple[LoadedModel, Head, dict[str, Any]]:
    """A published reranker distributed as a PEFT adapter with a trained head (RankLLaMA): `model` names the adapter
    (a hub id or a folder); it loads on the base its adapter_config names (else the preset's), read with the
    preset's prompt and head."""
    folder = adapter_folder(model)
    return load_trained(folder, dtype=dtype, device=device, merge=merge, model=adapter_base(folder) or
                        preset.base_model, template=preset.template, head=head or preset.head)


def adapter_weights(folder: Path) -> Path:
    """An adapter folder's weights file: adapter_model.safetensors, or the pickled .bin older PEFT wrote."""
    legacy = folder / LEGACY_ADAPTER_FILE
    return legacy if not (folder / ADAPTER_FILE).is_file() and legacy.is_file() else folder / ADAPTER_FILE


def adapter_folder(adapter: str) -> Path:
    """A local adapter folder as given, or a hub id's files downloaded (once, into the Hugging Face cache)."""
    path = Path(adapter).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(adapter, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as err:  # noqa: BLE001 - offline, unknown id, gated: one line either way
        raise ModelError(f"adapter {adapter!r}: not a local folder and not downloadable ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); download it and give its folder") from None


def adapter_base(folder: Path) -> str | None:
    """The base model a PEFT adapter names in its adapter_config.json, or None."""
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
    from relscope.prompts.presets import preset_for

    preset = preset_for(str(folder)) if template is None else None  # a published adapter (RankLLaMA): its prompt
    base = model or adapter_base(folder) or (preset.base_model if preset else None)
    if not base:
        raise ModelError(f"{folder}/adapter_config.json names no base model; pass the base model explicitly")
    if preset is not None:
        return {"model": base, "template": preset.template, "head": head or preset.head, "external": True,
                "max_length": preset.max_length}
    if _classifier_keys(folder):  # a trained score head (Tevatron, RankLLaMA): read with it, not with answer words
        return {"model": base, "template": template or "score", "head": head or "linear", "external": True}
    return {"model": base, "template": template or "yes_no", "head": head, "external": True}


# A sequence-classification head saved with a PEFT adapter (`modules_to_save`: score, classifier), as Tevatron and
# RankLLaMA ship their rerankers; older PEFT versions keep the wrapper's `modules_to_save.<adapter>` in the key.
_CLASSIFIER_KEY = re.compile(r"base_model\.model\.(score|classifier)(?:\.modules_to_save\.[^.]+)?\.(weight|bias)")


def _classifier_keys(folder: Path) -> dict[str, str]:
    """{"weight": key, "bias": key} of a classification head in the adapter's weights; empty when it has none."""
    from safetensors import safe_open

    path = folder / ADAPTER_FILE
    if not path.is_file():
        legacy = folder / LEGACY_ADAPTER_FILE  # adapters saved before PEFT wrote safetensors (RankLLaMA's)
        return _matching_keys(_read_legacy(legacy, "cpu")) if legacy.is_file() else {}
    try:
        with safe_open(str(path), framework="pt") as weights:
            keys = list(weights.keys())
    except (SafetensorError, OSError) as err:
        raise ModelError(_damaged(path, err)) from None
    return _matching_keys(keys)


def _matching_keys(keys) -> dict[str, str]:
    return {m[2]: key for key in keys if (m := _CLASSIFIER_KEY.fullmatch(key))}


def _read_legacy(path: Path, device: str) -> dict:
    """A PEFT adapter's pickled adapter_model.bin, tensors only (weights_only: no code runs from the file)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types; each is one line here
        raise ModelError(_damaged(path, err)) from None


def external_classifier(folder: Path, device: str) -> dict[str, torch.Tensor] | None:
    """The weight (num_labels, d_model) and bias of a PEFT adapter's trained classification head, or None."""
    keys = _classifier_keys(folder)
    if not keys:
        return None
    path = folder / ADAPTER_FILE
    tensors = read_tensors(path, device) if path.is_file() else _read_legacy(folder / LEGACY_ADAPTER_FILE, device)
    return {name: tensors[key] for name, key in keys.items()}


def load_classifier(head: nn.Module, classifier: dict[str, torch.Tensor], folder: Path) -> None:
    """Load a sequence-classification head into relscope's linear score head. One label: its logit is the score.
    Two labels: logit(label 1) - logit(label 0), label 1 being "relevant" (the transformers convention for binary
    classifiers); the ranking is the same as by P(relevant). A head without a bias (Llama's `score`) gets 0."""
    weight = classifier["weight"]
    bias = classifier.get("bias", torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    if weight.dim() != 2 or weight.shape[1] != head.score.in_features or weight.shape[0] not in (1, 2):
        raise ModelError(f"{folder / ADAPTER_FILE}: its classification head has shape {tuple(weight.shape)}; relscope "
                         f"reads one or two labels over the model's {head.score.in_features} hidden units")
    if weight.shape[0] == 2:
        weight, bias = weight[1:] - weight[:1], bias[1:] - bias[:1]
    if not bool(weight.isfinite().all()) or not bool(bias.isfinite().all()):
        raise ModelError(f"{folder / ADAPTER_FILE}: its classification head holds non-finite weights")
    with torch.no_grad():
        head.score.weight.copy_(weight.reshape(1, -1))
        head.score.bias.copy_(bias.reshape(1))
