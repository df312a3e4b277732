"""`relscope train` end to end on tiny models: objectives, checkpoints, logs, grad norms, resume, freezing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from relscope.config import from_mapping
from relscope.evaluation.settings import RerankConfig
from relscope.errors import ConfigError, DataError
from relscope.evaluation.job import run_rerank_job
from relscope.training.callbacks import load_grad_norms
from relscope.training.checkpoint import latest_checkpoint
from relscope.models.adapters import load_trained
from relscope.training.config import TrainConfig
from relscope.training.job import run_train_job


def _config(model: Path, groups: Path, **overrides) -> TrainConfig:
    values = dict(model=str(model), train=[str(groups)], negatives=2, max_length=96, max_steps=4, batch_size=2,
                  save_steps=2, learning_rate=1e-2, report_to=[], lora={"rank": 4, "dropout": 0.0})
    values.update(overrides)
    return from_mapping(TrainConfig, values)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in _log(out) if "loss" in r]


@pytest.mark.parametrize("objective", ["listwise", "graded_listwise", "yes_no", "pairwise"])
def test_each_objective_trains_and_writes_its_checkpoints(objective, tiny_family_dir, tiny_groups, tmp_path):
    out = tmp_path / objective
    summary = run_train_job(_config(tiny_family_dir("llama"), tiny_groups, objective=objective, max_steps=6,
                                    save_steps=3), out, progress=False)
    assert summary["steps"] == 6
    losses = _losses(out)
    assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2])  # it learns this easy set
    records = [r for r in _log(out) if "loss" in r]
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 < r["p_correct"] < 1.0 for r in records)
    # a step's rows: 2 groups of 3 prompts (pairwise: the positive against each of 2 negatives, in both orders)
    prompts = 2 * (4 if objective == "pairwise" else 3)
    for r in records:  # each step's wall time, and its real and padded tokens (rows x the longest row)
        assert r["step_seconds"] > 0
        assert 0 < r["tokens"] <= r["padded_tokens"] <= prompts * 96 and r["padded_tokens"] % prompts == 0
        assert 0 < r["rss_gib"] <= r["peak_rss_gib"] <= summary["process_peak_rss_gib"]  # this process's memory
    for step in (3, 6):
        names = {p.name for p in (out / f"checkpoint-{step}").iterdir()}
        assert {"adapter_model.safetensors", "relscope.json", "trainer_state.json", "optimizer.pt",
                "grad_norms.npz"} <= names
        assert "model.safetensors" not in names  # the base model is never copied
        assert ("head.safetensors" in names) == (objective in ("listwise", "graded_listwise"))
    assert (out / "tensorboard").exists() is False  # report_to=[] turns it off


def test_pad_to_multiple_of_reaches_every_training_batch(tiny_family_dir, tiny_groups, tmp_path):
    out = tmp_path / "rounded"
    run_train_job(_config(tiny_family_dir("llama"), tiny_groups, max_steps=3, pad_to_multiple_of=40), out,
                  progress=False)  # 40: max_length (96) is no multiple of it, so the longest prompt cannot be one
    records = [r for r in _log(out) if "loss" in r]
    assert len(records) == 3 and all(r["padded_tokens"] % (6 * 40) == 0 for r in records)  # 6 rows a step


def test_a_record_over_several_steps_gives_the_per_step_mean_of_tokens(tiny_family_dir, tiny_groups, tmp_path):
    """With gradient accumulation, a record every 2 steps holds the mean of the two steps' own records."""
    records = {}
    for every in (1, 2):
        out = tmp_path / f"every-{every}"
        run_train_job(_config(tiny_family_dir("llama"), tiny_groups, grad_accum=2, logging_steps=every), out,
                      progress=False)
        records[every] = [r for r in _log(out) if "loss" in r]
    assert [r["step"] for r in records[2]] == [2, 4]
    assert len({r["tokens"] for r in records[1]}) > 1  # steps of different lengths: a mean that can be wrong
    for key in ("tokens", "padded_tokens"):
        per_step = [r[key] for r in records[1]]
        halves = [(per_step[0] + per_step[1]) / 2, (per_step[2] + per_step[3]) / 2]
        assert [r[key] for r in records[2]] == pytest.approx(halves, abs=1)  # rounded to whole tokens


def test_grad_norms_cover_every_step_layer_and_module(tiny_family_dir, tiny_groups, tmp_path):
    run_train_job(_config(tiny_family_dir("llama"), tiny_groups, lora={"rank": 4, "freeze": ["late"]},
                          report_to=["tensorboard"]), tmp_path, progress=False)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    saved = load_grad_norms(tmp_path / "grad_norms.npz")
    assert saved["steps"].tolist() == [1, 2, 3, 4]
    assert saved["labels"].tolist() == ["q", "k", "v", "o", "gate", "up", "down"]
    norms = saved["norms"]
    assert norms.shape == (4, 3, 7)
    assert np.isnan(norms[:, 2]).all()  # layer 2 is "late" (of 3) and frozen: no gradient
    assert (norms[:, :2] > 0).all()


def test_grad_norm_of_a_site_is_the_norm_of_its_lora_gradients(tiny_family_dir, tiny_groups, tmp_path):
    """The recorder's aggregate equals the norm recomputed from the parameters' own gradients."""
    from relscope.training.callbacks import GradNormRecorder
    from relscope.models.lora import LoraSite

    layer = torch.nn.Module()
    layer.lora_A = torch.nn.Linear(4, 2, bias=False)
    layer.lora_B = torch.nn.Linear(2, 4, bias=False)
    layer.lora_A.weight.grad = torch.full((2, 4), 3.0)
    layer.lora_B.weight.grad = torch.full((4, 2), 4.0)
    root = torch.nn.Module()
    root.q = layer
    recorder = GradNormRecorder(root, [LoraSite(1, "q", "q")], n_layers=2)
    recorder.record(1)
    assert recorder.rows[0][1, 0] == pytest.approx(np.sqrt(8 * 9 + 8 * 16))
    assert np.isnan(recorder.rows[0][0, 0])
    # study 001's code: the mean of the per-tensor norms (A's and B's), beside its text's root of summed squares
    assert recorder.tensor_rows[0][1, 0] == pytest.approx((np.sqrt(8 * 9) + np.sqrt(8 * 16)) / 2)
    assert np.isnan(recorder.tensor_rows[0][0, 0])


def test_the_two_per_layer_gradient_norms_of_study_001(tmp_path):
    """Text: sqrt of the summed squares over the layer's LoRA gradients; code: the mean of its tensors' norms."""
    from relscope.analysis.dynamics import layer_norms, layer_tensor_means
    from relscope.models.lora import LoraSite
    from relscope.training.callbacks import GradNormRecorder, load_grad_norms

    root, sites = torch.nn.Module(), []
    for name, value in (("q", 1.0), ("v", 2.0)):
        module = torch.nn.Module()
        module.lora_A, module.lora_B = torch.nn.Linear(3, 1, bias=False), torch.nn.Linear(1, 3, bias=False)
        module.lora_A.weight.grad, module.lora_B.weight.grad = torch.full((1, 3), value), torch.full((3, 1), 2 * value)
        setattr(root, name, module)
        sites.append(LoraSite(0, name, name))
    recorder = GradNormRecorder(root, sites, n_layers=1)
    recorder.record(1)
    recorder.save(tmp_path / "grad_norms.npz")
    saved = load_grad_norms(tmp_path / "grad_norms.npz")
    tensors = [np.sqrt(3) * v for v in (1.0, 2.0, 2.0, 4.0)]  # the four tensors' norms
    assert layer_norms(saved["norms"])[0, 0] == pytest.approx(np.sqrt(sum(n * n for n in tensors)))
    assert layer_tensor_means(saved["tensor_means"])[0, 0] == pytest.approx(np.mean(tensors))


def test_frozen_layers_keep_their_initial_adapter(tiny_family_dir, tiny_groups, tmp_path):
    run_train_job(_config(tiny_family_dir("llama"), tiny_groups, lora={"rank": 4, "freeze": ["early", "2"]}),
                  tmp_path, progress=False)
    weights = load_file(tmp_path / "checkpoint-4" / "adapter_model.safetensors")
    b_matrices = {k: v for k, v in weights.items() if "lora_B" in k}
    for name, value in b_matrices.items():
        trained = ".layers.1." in name
        assert bool(value.abs().sum() > 0) == trained, name


def test_resume_after_an_interruption_gives_the_uninterrupted_result(tiny_family_dir, tiny_groups, tmp_path):
    config = _config(tiny_family_dir("llama"), tiny_groups, max_steps=6, save_steps=3,
                     lora={"rank": 4, "dropout": 0.1})  # dropout: the RNG state must resume too
    full = tmp_path / "full"
    run_train_job(config, full, progress=False)

    # An interruption after step 5: checkpoint-3 is the last complete one; the log and
    # the grad-norm file ran ahead of it, and a half-written checkpoint-6 lacks its trainer state.
    broken = tmp_path / "broken"
    shutil.copytree(full, broken)
    shutil.rmtree(broken / "checkpoint-6" / "optimizer.pt", ignore_errors=True)
    (broken / "checkpoint-6" / "trainer_state.json").unlink()
    (broken / "summary.json").unlink()
    assert latest_checkpoint(broken).name == "checkpoint-3"
    run_train_job(config, broken, progress=False)

    assert _losses(broken) == pytest.approx(_losses(full), rel=1e-6)
    tokens = [[(r["tokens"], r["padded_tokens"]) for r in _log(run) if "loss" in r] for run in (full, broken)]
    assert tokens[0] == tokens[1]  # counted per step, the resumed steps' own batches
    a = load_file(full / "checkpoint-6" / "adapter_model.safetensors")
    b = load_file(broken / "checkpoint-6" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    norms_a, norms_b = load_grad_norms(full / "grad_norms.npz"), load_grad_norms(broken / "grad_norms.npz")
    assert norms_b["steps"].tolist() == list(range(1, 7))
    np.testing.assert_allclose(norms_a["norms"], norms_b["norms"], rtol=1e-5)


def test_resume_with_another_config_is_refused(tiny_family_dir, tiny_groups, tmp_path):
    run_train_job(_config(tiny_family_dir("llama"), tiny_groups, max_steps=2), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="different config.*'learning_rate'"):
        run_train_job(_config(tiny_family_dir("llama"), tiny_groups, max_steps=2, learning_rate=1e-3), tmp_path,
                      progress=False)


@pytest.mark.parametrize("overrides,error,words", [
    ({"lora": {"targets": ["qkv"]}}, ConfigError, "unknown target module 'qkv'"),
    ({"lora": {"layers": [7]}}, ConfigError, "layer 7 is out of range"),
    ({"lora": {"rank": 0}}, ConfigError, "rank must be a positive integer"),
    ({"objective": "pointwise"}, ConfigError, "unknown training objective 'pointwise'"),
    ({"template": "pairwise"}, ConfigError, "cannot use the pairwise template"),
    ({"train": ["missing.jsonl"]}, DataError, "missing.jsonl: training data not found"),
    ({"train": []}, ConfigError, "train is empty"),
    ({"dev": {"data": "no-such-folder"}}, DataError, "no-such-folder"),
])
def test_bad_configs_fail_before_training(overrides, error, words, tiny_family_dir, tiny_groups, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(error, match=words):
        run_train_job(_config(tiny_family_dir("llama"), tiny_groups, **overrides), out, progress=False)
    assert not list(out.glob("checkpoint-*"))


def test_qlora_without_cuda_says_what_it_needs(tiny_family_dir, tiny_groups, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(Exception, match="needs a CUDA device and the bitsandbytes package"):
        run_train_job(_config(tiny_family_dir("llama"), tiny_groups, lora={"quantize_4bit": True}), tmp_path,
                      progress=False)


@pytest.mark.parametrize("family", ["phi3", "gpt_neox"])
def test_fused_families_train(family, tiny_family_dir, tiny_groups, tmp_path):
    run_train_job(_config(tiny_family_dir(family), tiny_groups, max_steps=2), tmp_path, progress=False)
    labels = load_grad_norms(tmp_path / "grad_norms.npz")["labels"].tolist()
    assert labels[0] == "q+k+v"


def test_trained_checkpoint_reranks_with_its_own_template_and_head(tiny_family_dir, tiny_groups, trec_dir,
                                                                    tmp_path):
    """rerank --adapter scores exactly what the trained module scores, and a fresh adapter matches the base."""
    from relscope.prompts.tokenize import PromptBuilder
    from relscope.training.module import RerankerModule

    run_train_job(_config(tiny_family_dir("llama"), tiny_groups, objective="listwise"), tmp_path / "train",
                  progress=False)
    checkpoint = tmp_path / "train" / "checkpoint-4"
    metrics = run_rerank_job(RerankConfig(adapter=str(checkpoint), data=str(trec_dir), top_k=3), tmp_path / "rr",
                             progress=False)
    assert metrics["template"] == "score" and metrics["adapter"] == str(checkpoint)

    loaded, head, meta = load_trained(checkpoint)
    builder = PromptBuilder(loaded.tokenizer, __import__("relscope").TEMPLATES.get(meta["template"]), 96)
    prompt = builder.build("why are bananas yellow", ["Bananas are yellow because of carotenoids."])
    module = RerankerModule(loaded.model, loaded.spec, head)
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        direct = module(ids, torch.ones_like(ids), torch.tensor([len(prompt) - 1])).item()
        with loaded.model.disable_adapter():  # every LoRA delta off: the base model's hidden state
            base = module(ids, torch.ones_like(ids), torch.tensor([len(prompt) - 1])).item()
    scores = {(f[0], f[2]): float(f[4]) for f in map(str.split, (tmp_path / "rr" / "run.trec").read_text().splitlines())}
    assert scores[("2", "p2")] == pytest.approx(direct, abs=1e-4)
    assert abs(direct - base) > 1e-4  # the adapter changed the score


def test_gradient_checkpointing_changes_nothing_but_memory(tiny_family_dir, tiny_groups, tmp_path):
    plain, checkpointed = tmp_path / "plain", tmp_path / "ckpt"
    run_train_job(_config(tiny_family_dir("llama"), tiny_groups, max_steps=3), plain, progress=False)
    run_train_job(_config(tiny_family_dir("llama"), tiny_groups, max_steps=3, gradient_checkpointing=True),
                  checkpointed, progress=False)
    assert _losses(checkpointed) == pytest.approx(_losses(plain), rel=1e-5)


def test_checkpointing_runs_no_backward_below_the_lowest_adapted_layer(tiny_family_dir):
    """transformers' checkpointing makes the embeddings' output require grad (for reentrant checkpointing); with
    LoRA on the top layer only, backward must stop there: nothing below it may be part of the graph."""
    from relscope.models.load import load_model
    from relscope.models.lora import LoraSettings, apply_lora
    from relscope.training.job import _checkpoint_activations

    grads, below = {}, {}
    for checkpointed in (False, True):
        loaded = load_model(str(tiny_family_dir("llama")), dtype="float32")
        torch.manual_seed(0)
        peft_model, _ = apply_lora(loaded.model, loaded.spec, LoraSettings(rank=4, dropout=0.0, layers=(-1,)))
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05)
        base = peft_model.get_base_model()
        if checkpointed:
            _checkpoint_activations(base)
        base.train()
        seen = []
        base.model.layers[0].register_forward_hook(lambda _, __, out: seen.append(out[0] if isinstance(out, tuple)
                                                                                  else out))
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        base.model(input_ids=ids).last_hidden_state.sum().backward()
        below[checkpointed] = seen[0].requires_grad
        grads[checkpointed] = {n: p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    assert below == {False: False, True: False}
    assert grads[True].keys() == grads[False].keys() and grads[False]
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-6)


def test_a_run_written_before_a_new_config_key_still_resumes(tiny_family_dir, tiny_groups, tmp_path):
    import yaml

    out = tmp_path / "run"
    config = _config(tiny_family_dir("llama"), tiny_groups, max_steps=4, save_steps=2)
    run_train_job(config, out, progress=False)
    shutil.rmtree(out / "checkpoint-4")  # killed after step 2's checkpoint
    (out / "summary.json").unlink()
    written = yaml.safe_load((out / "config.yaml").read_text())
    written.pop("pad_to_multiple_of")  # as a run from before the key existed wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(written))
    assert run_train_job(config, out, progress=False)["steps"] == 4
    written["max_steps"] = 6  # a real difference is still refused
    (out / "config.yaml").write_text(yaml.safe_dump(written))
    with pytest.raises(ConfigError, match="max_steps"):
        run_train_job(config, out, progress=False)


def test_cli_train_with_overrides_then_rerank_the_checkpoint(tiny_family_dir, tiny_groups, trec_dir, tmp_path, capsys):
    import yaml

    from relscope.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(dict(model=str(tiny_family_dir("llama")), train=[str(tiny_groups)],
                                          negatives=2, max_length=96, max_steps=2, save_steps=2, report_to=[])))
    assert main(["train", "--config", str(config), "--set", "lora.rank=2", "--set", "lora.targets=[q,v]",
                 "--out", str(tmp_path / "t"), "--quiet"]) == 0
    meta = json.loads((tmp_path / "t" / "checkpoint-2" / "relscope.json").read_text())
    assert meta["lora"]["rank"] == 2 and meta["lora"]["targets"] == ["q", "v"]
    assert main(["rerank", "--adapter", str(tmp_path / "t" / "checkpoint-2"), "--data", str(trec_dir),
                 "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert main(["train", "--config", str(config), "--set", "lora.rank", "--out", str(tmp_path / "x")]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_merged_adapter_scores_equal_the_unmerged_ones(tiny_family_dir, tiny_groups, tmp_path):
    """rerank --adapter merges LoRA into the weights: an exact fast path, so the scores must not move."""
    from relscope.models.scoring import Scorer
    from relscope.prompts.templates import get_template
    from relscope.prompts.tokenize import PromptBuilder

    run_train_job(_config(tiny_family_dir("llama"), tiny_groups), tmp_path / "t", progress=False)
    scores = []
    for merge in (False, True):
        loaded, head, meta = load_trained(tmp_path / "t" / "checkpoint-4", merge=merge)
        builder = PromptBuilder(loaded.tokenizer, get_template(meta["template"]), 96)
        prompts = [builder.build("why are bananas yellow", [t]) for t in ["Bananas are yellow.", "Rivers flow."]]
        scores.append(Scorer(loaded.model, loaded.spec, head, 0, progress=False).score(prompts))
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)


def test_a_second_run_on_the_same_folder_is_refused_and_a_dead_runs_lock_is_no_lock(tiny_family_dir, tiny_groups,
                                                                                     tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from relscope.errors import BusyError

    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".relscope.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"held = FileLock({str(lock)!r}); held.acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # a live process holds it
        with pytest.raises(BusyError, match="another relscope run"):
            run_train_job(_config(tiny_family_dir("llama"), tiny_groups, max_steps=1), out, progress=False)
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: the OS released its lock, whatever the file says (here: a pid that now belongs to us).
    lock.write_text(f"{os.getpid()} {socket.gethostname()}")
    run_train_job(_config(tiny_family_dir("llama"), tiny_groups, max_steps=1), out, progress=False)


def test_a_non_finite_loss_stops_training_naming_the_step(tiny_family_dir, tiny_groups, tmp_path):
    from tiny import tiny_model, tiny_tokenizer

    from relscope.errors import TrainingError

    broken = tmp_path / "broken-model"
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")  # a corrupted weight file
    model.save_pretrained(broken)
    tiny_tokenizer().save_pretrained(broken)
    with pytest.raises(TrainingError, match="step 1: the loss is nan"):
        run_train_job(_config(broken, tiny_groups), tmp_path / "out", progress=False)


def test_a_non_finite_gradient_names_the_layer_and_module():
    from relscope.errors import TrainingError
    from relscope.training.callbacks import GradNormRecorder
    from relscope.models.lora import LoraSite

    module = torch.nn.Module()
    module.lora_A = torch.nn.Linear(2, 2, bias=False)
    module.lora_A.weight.grad = torch.tensor([[1.0, float("nan")], [0.0, 0.0]])
    root = torch.nn.Module()
    root.down = module
    with pytest.raises(TrainingError, match="step 7: the gradient of layer 2's down LoRA is nan"):
        GradNormRecorder(root, [LoraSite(2, "down", "down")], n_layers=3).record(7)


def test_no_resume_sets_the_earlier_run_aside(tiny_family_dir, tiny_groups, tmp_path):
    config = _config(tiny_family_dir("llama"), tiny_groups, max_steps=2)
    run_train_job(config, tmp_path, progress=False)
    run_train_job(config, tmp_path, resume=False, progress=False)
    (aside,) = tmp_path.glob("replaced-*")
    assert (aside / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert len(_losses(tmp_path)) == 2  # a fresh log, not appended to the old one


def test_dev_run_is_scored_at_each_checkpoint_into_the_log(tiny_family_dir, tiny_groups, trec_dir, tmp_path):
    run_train_job(_config(tiny_family_dir("llama"), tiny_groups, dev={"data": str(trec_dir), "top_k": 3,
                                                                      "max_queries": 1}), tmp_path, progress=False)
    dev_records = [r for r in _log(tmp_path) if "dev/nDCG@10" in r]
    assert [r["step"] for r in dev_records] == [2, 4]
    saved = json.loads((tmp_path / "checkpoint-4" / "dev_metrics.json").read_text())
    assert saved["nDCG@10"] == pytest.approx(dev_records[-1]["dev/nDCG@10"])
    direct = run_rerank_job(RerankConfig(adapter=str(tmp_path / "checkpoint-4"), data=str(trec_dir), top_k=3),
                            tmp_path / "rr", progress=False)
    per_query = (tmp_path / "rr" / "per_query.csv").read_text().splitlines()
    first_query = dict(zip(per_query[0].split(","), per_query[1].split(",")))
    assert saved["nDCG@10"] == pytest.approx(float(first_query["reranked:nDCG@10"]), abs=1e-4)
    assert direct["queries"] == 2


@pytest.mark.parametrize("objective", ["pairwise", "listwise"])
def test_held_out_accuracy_is_logged_from_step_0_on_groups_never_trained_on(objective, tiny_family_dir, tiny_groups,
                                                                            tmp_path):
    """Study 001's eval-accuracy curve: held-out whole queries, scored at step 0 and every eval_steps."""
    from relscope.data.groups import read_groups
    from relscope.data.training import hold_out

    config = _config(tiny_family_dir("llama"), tiny_groups, objective=objective, eval_groups=2, eval_steps=2)
    run_train_job(config, tmp_path, progress=False)
    records = [r for r in _log(tmp_path) if "eval_accuracy" in r]
    assert [r["step"] for r in records] == [0, 2, 4]
    assert all(0.0 <= r["eval_accuracy"] <= 1.0 for r in records)
    train, held = hold_out(read_groups(tiny_groups), 2, config.seed)
    assert len(held) >= 2 and not {g.qid for g in train} & {g.qid for g in held}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["held_out_groups"] == len(held) and manifest["groups"] == len(train)


def test_the_held_out_accuracy_is_the_models_own(tiny_family_dir, tiny_groups, tmp_path):
    """The step-0 point equals the untrained model scored by hand on the same held-out prompts (not a constant)."""
    from transformers import set_seed

    from relscope.data.groups import read_groups
    from relscope.data.training import hold_out
    from relscope.models.load import load_model
    from relscope.training.data import Draw, GroupCollator
    from relscope.training.job import _build_module, _resolve_objective

    config = _config(tiny_family_dir("llama"), tiny_groups, objective="pairwise", eval_groups=2, max_steps=1)
    run_train_job(config, tmp_path, progress=False)
    logged = next(r["eval_accuracy"] for r in _log(tmp_path) if r.get("step") == 0 and "eval_accuracy" in r)
    objective, template, head_name = _resolve_objective(config)
    set_seed(config.seed)
    loaded = load_model(config.model)
    module, _, builder = _build_module(config, loaded, template, head_name)
    _, held = hold_out(read_groups(tiny_groups), 2, config.seed)
    batch = GroupCollator(held, objective, builder, config.negatives, loaded.tokenizer.pad_token_id, config.seed,
                          config.hard_fraction)([Draw(i, 0) for i in range(len(held))])
    module.eval()
    with torch.no_grad():
        scores = module(**batch).view(-1, objective.prompts_per_group(config.negatives))
    signed = torch.cat([scores[:, 0::2], -scores[:, 1::2]], dim=-1)  # each A-or-B prompt: right when > 0
    assert logged == pytest.approx(float((signed > 0).float().mean()), abs=1e-4)


def test_study_001s_two_logit_head_trains_logs_its_gradient_norm_and_reloads(tiny_family_dir, tiny_groups, tmp_path):
    """001: the last token projected to two trained logits (A, B); its gradient norm is logged beside the layers'."""
    from relscope.models.adapters import load_trained
    from relscope.models.heads import TwoLogitHead
    from relscope.training.callbacks import load_grad_norms

    run_train_job(_config(tiny_family_dir("llama"), tiny_groups, objective="pairwise", head="two_logit",
                          max_steps=2), tmp_path, progress=False)
    norms = load_grad_norms(tmp_path / "grad_norms.npz")
    assert norms["head_norms"].shape == (2,) and np.isfinite(norms["head_norms"]).all()
    assert (norms["head_norms"] > 0).all()
    loaded, head, meta = load_trained(tmp_path / "checkpoint-2")
    assert isinstance(head, TwoLogitHead) and meta["head"] == "two_logit"
    saved = load_file(tmp_path / "checkpoint-2" / "head.safetensors")
    torch.testing.assert_close(head.score.weight.detach().float(), saved["score.weight"].float())
