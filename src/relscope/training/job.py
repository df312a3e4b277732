"""`relscope train` as a function: check everything, build the pieces, train, resume if interrupted.

out/
    config.yaml, manifest.json          what ran (written before training starts)
    checkpoint-<step>/                  see relscope.training.checkpoint
    log.jsonl, tensorboard/             loss, accuracy, p_correct, learning rate, grad norm, dev metrics
    grad_norms.npz                      per step x layer x module gradient norms
    summary.json                        written when training ends
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainingArguments, set_seed

from relscope.config import dump_yaml, from_mapping, load_yaml, to_mapping
from relscope.data.dev import load_dev_run
from relscope.data.training import hold_out, load_training_groups
from relscope.errors import ConfigError
from relscope.io import atomic_write_json, atomic_write_text, output_lock
from relscope.manifest import CONFIG_FILE, MANIFEST_FILE, build_manifest
from relscope.models.adapters import base_fingerprint
from relscope.models.heads import HEADS, build_head, default_head
from relscope.models.load import LoadedModel, load_model
from relscope.models.lora import apply_lora, lora_sites, resolve_freeze
from relscope.models.scoring import Scorer, ScoringOptions
from relscope.models.specs.base import num_layers
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder
from relscope.training.callbacks import (
    LOG_FILE,
    DevEvaluator,
    GradNormRecorder,
    HeldOutAccuracy,
    JsonlLogger,
    SaveAtSteps,
    trim_log,
)
from relscope.training.checkpoint import GRAD_NORMS_FILE, checkpoint_step, latest_checkpoint
from relscope.training.config import TrainConfig
from relscope.training.data import Draw, GroupCollator, GroupDataset
from relscope.training.memory import peak_resident_gib
from relscope.training.module import RerankerModule
from relscope.training.objectives import OBJECTIVES
from relscope.training.trainer import RelscopeTrainer

if TYPE_CHECKING:
    from relscope.evaluation.rerank import Reranker
    from relscope.models.lora import LoraSite
    from relscope.prompts.templates import PromptTemplate
    from relscope.training.objectives import Objective

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"  # steps, last checkpoint, time and peak memory of a finished run


def run_train_job(config: TrainConfig, out_dir: str | Path, resume: bool = True,
                  progress: bool = True) -> dict[str, Any]:
    """Train; resume from the last complete checkpoint in out_dir unless resume=False. One run per folder."""
    out = Path(out_dir)
    first_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun/accelerate, one process holds the lock
    with output_lock(out) if first_process else nullcontext():
        return _train(config, out, resume, progress)


def _train(config: TrainConfig, out: Path, resume: bool, progress: bool) -> dict[str, Any]:
    objective, template, head_name = _resolve_objective(config)
    checkpoint = latest_checkpoint(out) if resume else None
    _check_same_run(out, config, checkpoint)
    if checkpoint is not None and checkpoint_step(checkpoint) >= config.max_steps:
        return _already_trained(out, checkpoint)
    dev = load_dev_run(config.dev) if config.dev else None  # bad dev data fails here, before the model loads
    groups = load_training_groups(config.train, config.negatives, config.hard_fraction, config.min_grade, config.seed,
                                  graded=objective.graded)
    groups, held_out = hold_out(groups, config.eval_groups, config.seed)

    set_seed(config.seed)  # LoRA and linear-head initialisation
    loaded = load_model(config.model, dtype=config.dtype, device=config.device,
                        quantize_4bit=config.lora.quantize_4bit)
    module, sites, builder = _build_module(config, loaded, template, head_name)
    recorder = GradNormRecorder(module.base, sites, num_layers(loaded.model.config), module.head)
    meta = {"model": config.model, "base": base_fingerprint(loaded.model.config), "objective": objective.name,
            "template": template.name, "head": head_name, "max_length": config.max_length,
            "lora": to_mapping(config.lora),
            # the answer tokens the head was trained to read: a later relscope must read the same ones
            "answer_ids": list(builder.answer_ids) if template.answers else None}
    trainer = RelscopeTrainer(
        model=module,
        args=_training_arguments(config, out, loaded, progress),
        train_dataset=GroupDataset(groups),
        data_collator=GroupCollator(groups, objective, builder, config.negatives, loaded.tokenizer.pad_token_id,
                                    seed=config.seed, hard_fraction=config.hard_fraction,
                                    pad_to_multiple_of=config.pad_to_multiple_of),
        callbacks=[JsonlLogger(out / LOG_FILE), recorder,
                   *([SaveAtSteps(config.save_at, config.max_steps)] if config.save_at else [])],
        objective=objective,
        prompts_per_group=objective.prompts_per_group(config.negatives),
        meta=meta,
        grad_recorder=recorder,
    )
    _add_tensorboard(trainer, config, out)
    if held_out:
        collate = GroupCollator(held_out, objective, builder, config.negatives, loaded.tokenizer.pad_token_id,
                                seed=config.seed, hard_fraction=config.hard_fraction,
                                pad_to_multiple_of=config.pad_to_multiple_of)
        batches = [collate([Draw(i, 0) for i in range(start, min(start + config.batch_size, len(held_out)))])
                   for start in range(0, len(held_out), config.batch_size)]
        trainer.add_callback(HeldOutAccuracy(trainer, batches, objective.prompts_per_group(config.negatives),
                                             config.eval_steps or config.save_steps))
    if dev is not None:
        reranker = _dev_reranker(loaded, module, builder)
        trainer.add_callback(DevEvaluator(trainer, reranker, dev, config.dev.top_k, config.dev.measures))

    if trainer.is_world_process_zero():
        if not resume:
            _set_aside(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CONFIG_FILE, dump_yaml(config))
        atomic_write_json(out / MANIFEST_FILE, build_manifest(
            to_mapping(config), {}, template_hash=template.fingerprint(), model_source=loaded.source,
            groups=len(groups), held_out_groups=len(held_out), lora_sites=len(sites)))
    step = checkpoint_step(checkpoint) if checkpoint is not None else 0
    if trainer.is_world_process_zero():
        trim_log(out / LOG_FILE, step)  # records a killed run wrote after its last checkpoint (or before any)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
        recorder.resume_from(checkpoint, step)

    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    summary = {
        "steps": trainer.state.global_step,
        "processes": trainer.args.world_size,
        "train_loss": result.training_loss,
        "seconds_this_session": round(time.perf_counter() - start, 1),
        # the process's most so far: loading included and, in a study, the stages it ran before training
        "process_peak_rss_gib": round(peak_resident_gib(), 3),
        "groups": len(groups),
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "resumed_from": str(checkpoint) if checkpoint else None,
        "last_checkpoint": str(latest_checkpoint(out)),
    }
    if trainer.is_world_process_zero():
        atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


def _already_trained(out: Path, checkpoint: Path) -> dict[str, Any]:
    """A run whose last checkpoint is at max_steps: nothing to do (the Trainer would take one step more on resume).
    Its summary.json is kept, or written when a kill came between the last checkpoint and it."""
    log.info("%s: already trained to step %d; nothing to do", out, checkpoint_step(checkpoint))
    if int(os.environ.get("RANK", "0")) == 0:
        trim_log(out / LOG_FILE, checkpoint_step(checkpoint))  # a record cut short by a kill after the end
    path = out / SUMMARY_FILE
    if path.is_file():
        from relscope.models.adapters import read_json

        summary = read_json(path, "training summary", "delete it: the next `relscope train` there writes it again")
        if isinstance(summary, dict) and summary.get("steps") == checkpoint_step(checkpoint):
            return summary
    summary = {"steps": checkpoint_step(checkpoint), "seconds_this_session": 0.0, "resumed_from": str(checkpoint),
               "last_checkpoint": str(checkpoint)}
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(path, summary)
    return summary


def _resolve_objective(config: TrainConfig) -> tuple[Objective, PromptTemplate, str]:
    """(objective, template, head name), checked against each other before anything loads."""
    objective = OBJECTIVES.get(config.objective)
    template = get_template(config.template or objective.template)
    head_name = config.head or default_head(template)
    HEADS.get(head_name)
    if (template.kind == "pairwise") != (objective.name == "pairwise"):
        raise ConfigError(f"template: the {objective.name} objective cannot use the {template.kind} template "
                          f"{template.name!r}; leave template unset to use {objective.template!r}")
    return objective, template, head_name


def _build_module(config: TrainConfig, loaded: LoadedModel, template: PromptTemplate,
                  head_name: str) -> tuple[RerankerModule, list[LoraSite], PromptBuilder]:
    """LoRA on the resolved sites (bad targets or layers fail here), the head, and the module that trains."""
    lora_sites(loaded.model, loaded.spec, config.lora)  # checked before QLoRA preparation changes the model
    resolve_freeze(config.lora.freeze, num_layers(loaded.model.config))
    if config.lora.quantize_4bit:
        from peft import prepare_model_for_kbit_training

        # no checkpointing or input-grad hook of its own: _checkpoint_activations does it when the config asks
        loaded.model = prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)
    peft_model, sites = apply_lora(loaded.model, loaded.spec, config.lora)
    if config.gradient_checkpointing:  # non-reentrant: works although the frozen inputs need no grad
        _checkpoint_activations(peft_model.get_base_model())
    builder = PromptBuilder(loaded.tokenizer, template, config.max_length)
    head = build_head(head_name, peft_model, builder)
    if any(p.requires_grad for p in head.parameters()):
        head.float()  # a trained head keeps fp32 master weights, as LoRA does
    module = RerankerModule(peft_model, loaded.spec, head, config.chunk_rows, config.pad_to_multiple_of)
    return module, sites, builder


def _set_aside(out: Path) -> None:
    """--no-resume keeps what an earlier run left (nothing is lost): it moves to out/replaced-<time>/."""
    earlier = [p for p in out.glob("*") if p.name.startswith("checkpoint-") or p.name in
               (LOG_FILE, GRAD_NORMS_FILE, SUMMARY_FILE, "tensorboard", CONFIG_FILE, MANIFEST_FILE)]
    if earlier:
        keep = out / time.strftime("replaced-%Y%m%d-%H%M%S")
        keep.mkdir()
        for path in earlier:
            path.rename(keep / path.name)
        log.info("set the earlier run aside in %s", keep)


def _check_same_run(out: Path, config: TrainConfig, checkpoint: Path | None) -> None:
    """Resuming with another config would silently mix two runs: refuse, naming the fix."""
    if checkpoint is None or not (out / CONFIG_FILE).is_file():
        return
    before = load_yaml(out / CONFIG_FILE)
    try:  # keys added to TrainConfig since that run was written take their defaults, as that run had them
        before = to_mapping(from_mapping(TrainConfig, before, str(out / CONFIG_FILE)))
    except (ConfigError, ValueError):
        pass  # a key since renamed or removed: compared as written, so it shows as the difference
    now = to_mapping(config)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))  # both plain data
    if changed:
        raise ConfigError(f"{out}: holds a run with a different config (key {changed[0]!r} differs); "
                          "resume with the same config, pick a new --out, or pass --no-resume to start over there")


def _dev_reranker(loaded: LoadedModel, module: RerankerModule, builder: PromptBuilder) -> Reranker:
    from relscope.evaluation.rerank import Reranker

    scorer = Scorer(module.peft_model, loaded.spec, module.head, loaded.tokenizer.pad_token_id, ScoringOptions(),
                    progress=False)
    return Reranker(replace(loaded, model=module.peft_model), builder, scorer)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX-512 BF16 or AMX). Without them PyTorch falls back
    to a generic kernel about 100x slower than float32, so `bf16: auto` trains in float32 there."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _training_arguments(config: TrainConfig, out: Path, loaded: LoadedModel, progress: bool) -> TrainingArguments:
    on_cuda = loaded.device.type == "cuda"
    native = torch.cuda.is_bf16_supported() if on_cuda else cpu_has_native_bf16()
    # On a CPU, auto never autocasts a model the user asked for in float16 to bf16: float16 is what they chose, and its
    # overflow must show as one. (On CUDA it still does, as before: pure float16 there would need loss scaling.)
    float16_on_cpu = config.dtype == "float16" and not on_cuda
    bf16 = config.bf16 == "yes" or (config.bf16 == "auto" and native and not float16_on_cpu)
    if bf16 and not native:
        log.warning("bf16 on a %s without native bf16 instructions: matrix products run far slower than in "
                    "float32 (0.8 vs 70 GFLOP/s measured on an AVX2-only CPU); set bf16: auto or no",
                    "GPU" if on_cuda else "CPU")
    return TrainingArguments(
        output_dir=str(out),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type=config.scheduler,
        save_strategy="no" if config.save_at else "steps",  # save_at: SaveAtSteps asks for each save
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        full_determinism=config.deterministic,
        bf16=bf16,
        use_cpu=not on_cuda,
        report_to="none",  # TensorBoard is added by hand, to write into out/tensorboard
        remove_unused_columns=False,
        label_names=[],
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        disable_tqdm=not progress,
    )


def _add_tensorboard(trainer: RelscopeTrainer, config: TrainConfig, out: Path) -> None:
    if "tensorboard" not in config.report_to:
        return
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(out / "tensorboard")
    trainer.add_callback(callback)


def _checkpoint_activations(model) -> None:
    """Non-reentrant activation checkpointing; named per transformers version. transformers also makes the embedding
    output require grad, which only reentrant checkpointing needs: undone, so backward stops at the lowest layer with
    trainable weights instead of running input gradients through every frozen layer below it."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.disable_input_require_grads()
