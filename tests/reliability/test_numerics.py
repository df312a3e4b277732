"""Numerical guards: float16 overflow is detected and named (with the fix), not passed on as NaN scores or losses."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_loaded, tiny_model, tiny_tokenizer

from relscope.config import from_mapping
from relscope.errors import ModelError, TrainingError
from relscope.models.heads import build_head
from relscope.models.scoring import Scorer, ScoringOptions
from relscope.prompts import PromptBuilder, get_template
from relscope.training.config import TrainConfig
from relscope.training.job import run_train_job


def _overflowing(model):
    """Weights whose MLP activations pass float16's 65504 yet stay finite in float32 (as large activations in
    some 7B checkpoints do)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight.mul_(3e3)
            layer.mlp.gate_proj.weight.mul_(3e3)
    return model


def _scores(dtype: torch.dtype):
    loaded = tiny_loaded("llama")
    _overflowing(loaded.model).to(dtype)
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no"))
    head = build_head("yes_no", loaded.model, builder)
    prompts = [builder.build("what is the capital of france", [p]) for p in ("Paris is in France.", "Rivers flow.")]
    return Scorer(loaded.model, loaded.spec, head, loaded.tokenizer.pad_token_id, ScoringOptions(),
                  progress=False).score(prompts)


def test_float16_overflow_in_scoring_is_named_with_its_fix():
    assert torch.isfinite(torch.as_tensor(_scores(torch.float32))).all()  # the same weights are fine in float32
    with pytest.raises(ModelError, match="not finite; float16 overflowed .* --dtype bfloat16"):
        _scores(torch.float16)


def test_float16_overflow_in_training_stops_at_step_1_naming_it(tmp_path, tiny_groups):
    folder = tmp_path / "big-activations"
    _overflowing(tiny_model("llama")).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    config = from_mapping(TrainConfig, dict(model=str(folder), dtype="float16", train=[str(tiny_groups)],
                                            negatives=2, max_length=96, max_steps=2, batch_size=2, save_steps=2,
                                            report_to=[], lora={"rank": 4}))
    with pytest.raises(TrainingError, match="step 1: the loss is nan; float16 overflowed"):
        run_train_job(config, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("checkpoint-*"))


@pytest.mark.parametrize("deterministic", [False, True])
def test_same_seed_and_config_give_identical_runs_on_cpu(deterministic, tmp_path, tiny_family_dir, tiny_groups):
    """Bit for bit: every logged loss and the trained adapter (docs/DESIGN-NOTES.md says what holds on GPU)."""
    import json

    from safetensors.torch import load_file

    config = from_mapping(TrainConfig, dict(model=str(tiny_family_dir("llama")), train=[str(tiny_groups)],
                                            negatives=2, max_length=96, max_steps=3, batch_size=2, save_steps=3,
                                            report_to=[], deterministic=deterministic,
                                            lora={"rank": 4, "dropout": 0.1}))
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        run_train_job(config, out, progress=False)
    logs = [[json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
            for out in runs]
    assert logs[0] == logs[1]
    a, b = (load_file(out / "checkpoint-3" / "adapter_model.safetensors") for out in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
