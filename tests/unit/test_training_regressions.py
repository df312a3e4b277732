"""Regression tests for issue 16's training bugs: per-epoch negatives (4), one max_length per checkpoint (5),
checkpoints complete only with relscope's own files (8), and TrainConfig validation."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from tiny import tiny_group_file

from relscope.config import from_mapping
from relscope.data.groups import NegativePassage, TrainingGroup
from relscope.errors import ConfigError, DataError
from relscope.training.config import TrainConfig

NEGATIVES = tuple(NegativePassage(f"distractor number {i} talks about mountains", "hard", f"n{i}") for i in range(10))


# -- bug 4: negatives and positives resampled every epoch -----------------------------------------------------------

def _collated_texts(groups: list[TrainingGroup], seed: int, epoch: int, negatives: int = 2) -> list[list[str]]:
    """What the training loop feeds the model in `epoch`: sampler -> dataset -> collator, decoded per group."""
    from tiny import tiny_tokenizer

    from relscope.prompts.templates import get_template
    from relscope.prompts.tokenize import PromptBuilder
    from relscope.training.data import EpochSeededSampler, GroupCollator, GroupDataset
    from relscope.training.objectives import OBJECTIVES

    tokenizer = tiny_tokenizer()
    builder = PromptBuilder(tokenizer, get_template("score"), 256)
    collator = GroupCollator(groups, OBJECTIVES.get("listwise"), builder, negatives, tokenizer.pad_token_id, seed)
    sampler, dataset = EpochSeededSampler(len(groups), seed), GroupDataset(groups)
    sampler.set_epoch(epoch)
    batch = collator([dataset[i] for i in sampler])
    rows = [tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    per_group = negatives + 1
    return [rows[i:i + per_group] for i in range(0, len(rows), per_group)]


def _passages(rows: list[str], candidates: list[str]) -> list[str]:
    return [next(c for c in candidates if c in row) for row in rows]


def test_each_epoch_draws_other_negatives_reproducibly_from_all_of_the_groups_negatives():
    """Bug 4: a group got the same negatives in every epoch."""
    group = TrainingGroup("q1", "what is the capital of france", ("Paris is the capital of France.",), NEGATIVES)
    texts = [n.text for n in NEGATIVES]
    draws = [_passages(_collated_texts([group], seed=3, epoch=e)[0][1:], texts) for e in range(6)]
    assert draws[0] != draws[1]
    assert len({t for d in draws for t in d}) > 4  # more of the group's 10 negatives than one epoch's 2
    again = [_passages(_collated_texts([group], seed=3, epoch=e)[0][1:], texts) for e in range(6)]
    assert again == draws  # seeded by (seed, epoch, group): the same in every process and on resume
    assert [_passages(_collated_texts([group], seed=4, epoch=e)[0][1:], texts) for e in range(6)] != draws


def test_each_epoch_may_draw_another_of_several_positives():
    """Bug 4: a group with several positives always trained on the same one."""
    positives = ("Paris is the capital of France.", "France has its capital in Paris.")
    group = TrainingGroup("q1", "what is the capital of france", positives, NEGATIVES)
    drawn = {_passages(_collated_texts([group], seed=0, epoch=e)[0][:1], list(positives))[0] for e in range(8)}
    assert drawn == set(positives)


def _trec_folder(tmp: Path, judged_zero: int, unjudged_in_run: int) -> Path:
    folder = tmp / "trec"
    folder.mkdir()
    ids = [f"d{i}" for i in range(judged_zero + unjudged_in_run)]
    (folder / "queries.tsv").write_text("1\twhat is the capital of france\n")
    (folder / "collection.tsv").write_text("pos\tParis is the capital of France.\n"
                                           + "".join(f"{d}\tdistractor {d} about rivers\n" for d in ids))
    (folder / "qrels.txt").write_text("1 0 pos 3\n" + "".join(f"1 0 {d} 0\n" for d in ids[:judged_zero]))
    if unjudged_in_run:
        (folder / "run.bm25.txt").write_text("".join(f"1 Q0 {d} {r + 1} {100 - r} bm25\n"
                                                     for r, d in enumerate(["pos", *ids])))
    return folder


@pytest.mark.parametrize("judged_zero,in_run", [(3, 17), (12, 0)], ids=["bm25-run", "judged-zero"])
def test_trec_built_groups_keep_every_hard_negative(judged_zero, in_run, tmp_path):
    """Bug 4: TREC-built groups kept only 7 of their hard negatives."""
    from relscope.data.training import load_training_groups

    (group,) = load_training_groups((str(_trec_folder(tmp_path, judged_zero, in_run)),), negatives=3)
    hard = [n.pid for n in group.negatives if n.kind == "hard"]
    assert sorted(hard) == sorted(f"d{i}" for i in range(judged_zero + in_run))
    assert len(hard) > 7


def test_groups_cli_still_writes_tevatron_jsonl_with_every_hard_negative(tmp_path, capsys):
    """Bug 4: `relscope groups` output stays a Tevatron file, now with all hard negatives."""
    from relscope.cli import main
    from relscope.data import read_groups

    out = tmp_path / "g.jsonl"
    assert main(["groups", "--data", str(_trec_folder(tmp_path, 2, 10)), "--negatives", "3", "--out", str(out)]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert set(record) == {"query_id", "query", "positive_passages", "negative_passages"}
    (group,) = read_groups(out)
    assert len(group.negatives) == 12


# -- bug 5: one max_length per checkpoint -----------------------------------------------------------------------------

def _train_tiny(tmp: Path, model: Path, groups: Path, max_length: int = 96, **extra) -> Path:
    from relscope.training.job import run_train_job

    values = {**dict(model=str(model), train=[str(groups)], negatives=2, max_length=max_length, max_steps=2,
                     batch_size=2, save_steps=2, report_to=[], lora={"rank": 4}), **extra}
    run_train_job(from_mapping(TrainConfig, values), tmp / "run", progress=False)
    return tmp / "run" / "checkpoint-2"


@pytest.fixture(scope="module")
def checkpoint_96(tmp_path_factory, tiny_family_dir) -> Path:
    tmp = tmp_path_factory.mktemp("len96")
    return _train_tiny(tmp, tiny_family_dir("llama"), tiny_group_file(tmp))


def _long_passage_folder(trec_dir: Path) -> Path:
    """The tiny TREC folder with one passage far longer than 96 tokens."""
    collection = trec_dir / "collection.tsv"
    long = "Bananas are yellow because of carotenoids. " + "Rivers flow to the sea and mountains rise. " * 60
    collection.write_text(collection.read_text().replace("Bananas are yellow because of carotenoids.", long))
    return trec_dir


def _scores(out: Path) -> dict[tuple[str, str], str]:
    return {(f[0], f[2]): f[4] for f in map(str.split, (out / "run.trec").read_text().splitlines())}


def test_rerank_adapter_scores_with_the_checkpoints_max_length(checkpoint_96, trec_dir, tmp_path, capsys):
    """Bug 5: rerank --adapter used 512 tokens for a checkpoint trained (and dev-scored) at 96."""
    from relscope.cli import main

    data = _long_passage_folder(trec_dir)
    common = ["rerank", "--adapter", str(checkpoint_96), "--data", str(data), "--top-k", "3", "--quiet"]
    for name, extra in (("default", []), ("96", ["--max-length", "96"]), ("512", ["--max-length", "512"])):
        assert main([*common, "--out", str(tmp_path / name), *extra]) == 0, capsys.readouterr().err
    assert _scores(tmp_path / "default") == _scores(tmp_path / "96")
    assert _scores(tmp_path / "default") != _scores(tmp_path / "512")  # the passage really is cut at 96
    assert "max_length: 96" in (tmp_path / "default" / "config.yaml").read_text()  # what ran is written down


def test_every_analysis_defaults_to_the_checkpoints_max_length(checkpoint_96, tiny_family_dir):
    """Bug 5: patching, heads, knockouts, probes, attention and lora jobs each used their own default."""
    from relscope.analysis.anatomy import _reranker
    from relscope.analysis.examples import load_with_prompts
    from relscope.analysis.patching.job import PatchSettings, load_patch_model
    from relscope.models.adapters import load_trained, resolve_max_length

    assert resolve_max_length(None, checkpoint_96, 256) == 96
    assert resolve_max_length(128, checkpoint_96, 256) == 128  # the user's choice wins
    assert resolve_max_length(None, None, 256) == 256  # no adapter: the command's own default
    model = str(tiny_family_dir("llama"))
    assert load_patch_model(PatchSettings(model=model, adapter=str(checkpoint_96)), "cpu")[2].max_length == 96
    assert load_patch_model(PatchSettings(model=model), "cpu")[2].max_length == 256
    assert load_with_prompts(model, str(checkpoint_96), None, None)[1].max_length == 96
    loaded, head, meta = load_trained(checkpoint_96)
    assert _reranker(loaded, head, meta, checkpoint_96).builder.max_length == 96  # lora checkpoints / ablate


# -- bug 8: relscope's own files before the completeness marker -------------------------------------------------------

@pytest.mark.parametrize("lost", ["grad_norms.npz", "dev_metrics.json"])
def test_a_checkpoint_without_relscopes_own_files_is_not_complete_and_resume_fills_it(lost, tiny_family_dir,
                                                                                    tiny_groups, trec_dir, tmp_path):
    """Bug 8: a kill after trainer_state.json but before grad norms / dev metrics left a gap resume never filled."""
    from relscope.training.checkpoint import latest_checkpoint
    from relscope.training.job import run_train_job

    values = dict(model=str(tiny_family_dir("llama")), train=[str(tiny_groups)], negatives=2, max_length=96,
                  max_steps=4, batch_size=2, save_steps=2, report_to=[], lora={"rank": 4, "dropout": 0.0},
                  dev={"data": str(trec_dir), "top_k": 3, "max_queries": 1})
    config = from_mapping(TrainConfig, values)
    full = tmp_path / "full"
    run_train_job(config, full, progress=False)
    killed = tmp_path / "killed"
    shutil.copytree(full, killed)
    (killed / "checkpoint-4" / lost).unlink()  # the kill landed after the Trainer's files, before relscope's
    (killed / "summary.json").unlink()
    assert latest_checkpoint(killed).name == "checkpoint-2"
    run_train_job(config, killed, progress=False)
    assert (killed / "checkpoint-4" / lost).read_bytes() == (full / "checkpoint-4" / lost).read_bytes()


def test_training_a_finished_run_again_takes_no_step_more(tiny_family_dir, tiny_groups, tmp_path):
    """Resuming a run already at max_steps made the Trainer take one step past it (found with bug 8)."""
    from relscope.training.job import run_train_job

    values = dict(model=str(tiny_family_dir("llama")), train=[str(tiny_groups)], negatives=2, max_length=96,
                  max_steps=2, batch_size=2, save_steps=2, report_to=[], lora={"rank": 4})
    config = from_mapping(TrainConfig, values)
    run_train_job(config, tmp_path, progress=False)
    log = (tmp_path / "log.jsonl").read_text()
    (tmp_path / "summary.json").unlink()  # killed after its last checkpoint, before the summary
    summary = run_train_job(config, tmp_path, progress=False)
    assert summary["steps"] == 2 and (tmp_path / "summary.json").is_file()
    assert (tmp_path / "log.jsonl").read_text() == log
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]


def test_relscopes_checkpoint_files_are_written_before_the_trainer_state(tiny_family_dir, tiny_groups, tmp_path,
                                                                        monkeypatch):
    """Bug 8: trainer_state.json (the completeness marker) must be the last file of a checkpoint: at the moment the
    Trainer writes it, relscope's own files are already there."""
    from transformers.trainer_callback import TrainerState

    present: list[set[str]] = []
    save = TrainerState.save_to_json

    def watched(self, json_path: str) -> None:
        if Path(json_path).parent.name.startswith("checkpoint-"):
            present.append({p.name for p in Path(json_path).parent.iterdir()})
        save(self, json_path)

    monkeypatch.setattr(TrainerState, "save_to_json", watched)
    folder = _train_tiny(tmp_path, tiny_family_dir("llama"), tiny_groups)
    listed = json.loads((folder / "relscope.json").read_text())["checkpoint_files"]
    assert present and {"relscope.json", "adapter_model.safetensors", "grad_norms.npz", *listed} <= present[-1]


# -- TrainConfig validation -------------------------------------------------------------------------------------------

BASE = dict(train=["groups.jsonl"])


@pytest.mark.parametrize("changes,words", [
    ({"warmup_steps": -1}, ("warmup_steps", ">= 0")),
    ({"scheduler": "cosine_annealing"}, ("scheduler", "cosine_annealing", "linear", "constant_with_warmup")),
    ({"scheduler": "reduce_lr_on_plateau"}, ("scheduler", "reduce_lr_on_plateau")),
    ({"learning_rate": math.nan}, ("learning_rate", "finite")),
    ({"learning_rate": math.inf}, ("learning_rate",)),
    ({"learning_rate": 0.0}, ("learning_rate",)),
    ({"weight_decay": math.nan}, ("weight_decay",)),
    ({"weight_decay": -0.1}, ("weight_decay",)),
    ({"max_grad_norm": math.inf}, ("max_grad_norm",)),
    ({"max_grad_norm": -1.0}, ("max_grad_norm",)),
    ({"max_steps": 0}, ("max_steps",)),
    ({"batch_size": 0}, ("batch_size",)),
    ({"save_steps": 0}, ("save_steps",)),
    ({"negatives": 0}, ("negatives",)),
    ({"hard_fraction": 1.5}, ("hard_fraction", "[0, 1]")),
    ({"hard_fraction": math.nan}, ("hard_fraction",)),
    ({"min_grade": 0}, ("min_grade",)),
    ({"max_length": 4}, ("max_length", "8")),
    ({"save_total_limit": 0}, ("save_total_limit",)),
    ({"seed": -1}, ("seed",)),
    ({"seed": 2 ** 40}, ("seed",)),
    ({"report_to": ["wandb"]}, ("report_to", "wandb", "tensorboard")),
    ({"dtype": "float8"}, ("dtype", "float8", "bfloat16")),
    ({"objective": "triplet"}, ("objective", "triplet", "listwise")),
    ({"template": "chatty"}, ("template", "chatty")),
    ({"head": "mlp"}, ("head", "mlp")),
    ({"lora": {"alpha": math.inf}}, ("lora.alpha",)),
    ({"lora": {"dropout": math.nan}}, ("lora.dropout",)),
    ({"dev": {"data": "d", "top_k": 0}}, ("dev.top_k",)),
    ({"dev": {"data": "d", "max_queries": 0}}, ("dev.max_queries",)),
    ({"dev": {"data": "d", "measures": []}}, ("dev.measures",)),
])
def test_train_config_rejects_out_of_range_values_naming_the_key(changes, words):
    """Robustness: every TrainConfig value is range-checked where it enters, with its key in the message."""
    with pytest.raises(ConfigError) as caught:
        from_mapping(TrainConfig, {**BASE, **changes}, "train.yaml")
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_train_config_accepts_every_listed_scheduler():
    from transformers.trainer_utils import SchedulerType

    from relscope.training.config import SCHEDULERS

    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}
    for name in SCHEDULERS:
        from_mapping(TrainConfig, {**BASE, "scheduler": name})


def test_check_paths_names_a_missing_or_unreadable_training_input(tmp_path, trec_dir, tiny_groups):
    """Robustness: the study checks every train: path before its first stage."""
    good = from_mapping(TrainConfig, {"train": [str(tiny_groups), str(trec_dir)], "dev": {"data": str(trec_dir)}})
    good.check_paths()
    with pytest.raises(DataError, match="gone.jsonl.*not found"):
        from_mapping(TrainConfig, {"train": [str(tmp_path / "gone.jsonl")]}).check_paths()
    (trec_dir / "qrels.txt").unlink()
    with pytest.raises(DataError, match="qrels.txt"):
        from_mapping(TrainConfig, {"train": [str(trec_dir)]}).check_paths()
    with pytest.raises(DataError, match="no-dev"):
        from_mapping(TrainConfig, {"train": [str(tiny_groups)], "dev": {"data": str(tmp_path / "no-dev")}}
                     ).check_paths()


def test_bf16_auto_follows_the_cpus_native_bf16_instructions():
    """On a CPU without AVX-512 BF16 or AMX, bf16 matrix products ran ~90x slower than float32 (0.8 vs 70 GFLOP/s on
    an AVX2-only EPYC), so `bf16: auto` must mean float32 there and bf16 where the instructions exist."""
    from relscope.training.job import cpu_has_native_bf16

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    sapphire = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    cascade = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n"
    assert not cpu_has_native_bf16(avx2) and not cpu_has_native_bf16(cascade)
    assert cpu_has_native_bf16(sapphire)


def test_a_checkpoint_read_at_other_answer_tokens_than_it_was_trained_on_is_refused(tiny_family_dir, tmp_path):
    """Bug 6's other half: a yes/no checkpoint stores the answer tokens it was trained to read; scoring it at other
    ones (another tokenizer, another relscope rule) would silently read other logits."""
    from relscope.errors import ModelError
    from relscope.models.adapters import load_trained

    folder = _train_tiny(tmp_path, tiny_family_dir("llama"), tiny_group_file(tmp_path), objective="yes_no")
    meta = json.loads((folder / "relscope.json").read_text())
    assert len(meta["answer_ids"]) == 2
    load_trained(folder)  # as trained: loads
    meta["answer_ids"] = [meta["answer_ids"][1], meta["answer_ids"][0]]
    (folder / "relscope.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="answer tokens"):
        load_trained(folder)


def test_checkpoints_at_an_explicit_list_of_steps(tmp_path, tiny_family_dir):
    """Study 000's Table 1 is read at steps 5, 10, 100 and 300: `save_at` saves exactly there, and at the end."""
    from relscope.training.checkpoint import complete_checkpoints

    _train_tiny(tmp_path, tiny_family_dir("llama"), tiny_group_file(tmp_path), max_steps=5, save_at=[3, 1])
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == ["checkpoint-1", "checkpoint-3",
                                                                          "checkpoint-5"]


@pytest.mark.parametrize("save_at", [[], [0], [6], [True]])
def test_save_at_steps_outside_the_run_are_refused(save_at):
    with pytest.raises(ConfigError, match="save_at"):
        from_mapping(TrainConfig, {"max_steps": 5, "save_at": save_at})


def test_bf16_auto_leaves_a_float16_model_on_a_cpu_in_float16(monkeypatch, tmp_path, tiny_family_dir, tiny_groups):
    """On a CPU with native bf16, `auto` autocast a model loaded in float16 to bf16, so its float16 overflow never
    showed (tests/reliability/test_numerics.py failed on such hosts); float32 and auto models still get bf16."""
    from types import SimpleNamespace

    import torch

    from relscope.config import from_mapping
    from relscope.training import job
    from relscope.training.config import TrainConfig

    monkeypatch.setattr(job, "cpu_has_native_bf16", lambda: True)
    loaded = SimpleNamespace(device=torch.device("cpu"))
    for dtype, expected in (("float16", False), ("float32", True), ("auto", True)):
        config = from_mapping(TrainConfig, dict(model=str(tiny_family_dir("llama")), train=[str(tiny_groups)],
                                                dtype=dtype, report_to=[]))
        assert job._training_arguments(config, tmp_path, loaded, False).bf16 is expected, dtype
