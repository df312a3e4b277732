"""`relscope study` regressions of issue 16: staleness read from the stage.json files (bug 7), damaged bookkeeping
files rerun their stage, and a bad config value, path or model deep in a late stage fails before the first stage."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from test_study import _statuses
from tiny import tiny_group_file, tiny_study_yaml, tiny_trec_folder

from relscope.analysis import anatomy
from relscope.cli import main
from relscope.study.stages import STAGE_NAMES

DOWNSTREAM_OF_TRAIN = ["checkpoints", "ablations", "representations", "patching", "heads", "report"]


def _ran(out: Path) -> list[str]:
    return [name for name, status in _statuses(out).items() if status == "ran"]


def test_a_rerun_after_an_interrupted_force_redoes_the_stages_downstream(study, monkeypatch):
    """Bug 7: after `--force train` died right after training, a plain rerun skipped the stages of the old model."""
    config, out = study

    def killed(*args, **kwargs):  # the process dies as the first stage after training starts
        raise KeyboardInterrupt

    monkeypatch.setattr(anatomy, "evaluate_checkpoints", killed)
    assert main(["study", str(config), "--out", str(out), "--force", "train", "--quiet"]) == 130
    monkeypatch.undo()
    assert main(["study", str(config), "--out", str(out), "--quiet"]) == 0
    assert _ran(out) == DOWNSTREAM_OF_TRAIN
    assert main(["study", str(config), "--out", str(out), "--quiet"]) == 0  # and then nothing is stale any more
    assert set(_statuses(out).values()) == {"skipped"}


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],  # truncated
    lambda text: "[1, 2]",  # valid JSON, not a record
    lambda text: json.dumps({**json.loads(text), "seconds": "long"}),  # hand-edited with a wrong type
    lambda text: json.dumps({**json.loads(text), "upstream": ["train"]}),
    lambda text: "\udcff",  # not UTF-8 (written below with surrogateescape)
], ids=["truncated", "not-a-record", "wrong-type", "upstream-wrong-type", "not-utf8"])
def test_a_damaged_stage_json_reruns_its_stage(study, damage, capsys):
    """Issue 16 (robustness): the study's own bookkeeping, damaged, makes that stage rerun instead of a traceback."""
    config, out = study
    record = out / "ablations" / "stage.json"
    record.write_bytes(damage(record.read_text()).encode("utf-8", "surrogateescape"))
    assert main(["study", str(config), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert _ran(out) == ["ablations", "report"]
    assert json.loads(record.read_text())["key"] == json.loads((out / "manifest.json").read_text())[
        "stages"]["ablations"]["key"]


@pytest.mark.parametrize("damage", ["{", "[]", '{"reranked": {"nDCG@10": "high"}}', '{"reranked": {}}'])
def test_a_damaged_zero_shot_metrics_file_is_one_error_naming_it(study, damage, capsys):
    """Issue 16 (robustness): a stage's output that a later stage reads back, damaged, is one line naming it."""
    config, out = study
    (out / "zero-shot" / "metrics.json").write_text(damage)
    assert main(["study", str(config), "--out", str(out), "--force", "checkpoints", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zero-shot/metrics.json" in err[0] and "--force zero-shot" in err[0], err


def _broken_study(tmp_path: Path, model: Path, trec: Path, groups: Path, change) -> Path:
    config = tiny_study_yaml(tmp_path / "s.yaml", model, trec, groups)
    values = yaml.safe_load(config.read_text())
    change(values)
    config.write_text(yaml.safe_dump(values))
    return config


CHANGES = [  # a bad value read only by a late stage, and the YAML key the error line must name
    ("mechanisms.groups", lambda v: v["mechanisms"].update(groups="/nonexistent/groups.jsonl")),
    ("representations.groups", lambda v: v["representations"].update(groups="{trec}")),  # a folder, not a file
    ("representations.groups", lambda v: v["representations"].update(groups="{trec}/queries.tsv")),  # not jsonl
    ("train.train", lambda v: v["train"].update(train=["{trec}", "/nonexistent/trec-dl-2021"])),
    ("mechanisms.head_positions", lambda v: v["mechanisms"].update(head_positions=["document", "nowhere"])),
    ("ablation.variants", lambda v: v["ablation"].update(variants=["attn-only", "qq+v"])),
    ("ablation.variants", lambda v: v["ablation"].update(variants=["all@0-7"])),  # the tiny model has 3 layers
    ("train.train", lambda v: v["train"].update(train=["{bad_trec}"])),  # a malformed qrels line
    ("dev.data", lambda v: v["dev"].update(data="{bad_trec}")),
    ("train.objective", lambda v: v["train"].update(objective="listwize")),
    ("representations.folds", lambda v: v["representations"].update(folds=1)),
    ("representations.folds", lambda v: v["representations"].update(folds=6, probe_groups=6,
                                                                     groups="{two_queries}")),
    ("dev.data", lambda v: v["dev"].update(data="{groups}")),
    ("mechanisms.min_gap", lambda v: v["mechanisms"].update(min_gap=-1.0)),
    ("model", lambda v: v.update(model="/nonexistent/model")),
]


@pytest.mark.parametrize("key,change", CHANGES, ids=[f"{key}-{i}" for i, (key, _) in enumerate(CHANGES)])
def test_a_bad_value_for_a_late_stage_fails_before_the_first_stage(key, change, tmp_path, tiny_model_dir, trec_dir,
                                                                   tiny_groups, capsys):
    """Issue 16 (robustness): study validates every stage's settings, paths and data before its first stage."""
    bad_trec = shutil.copytree(trec_dir, tmp_path / "bad-trec")
    with (bad_trec / "qrels.txt").open("a") as qrels:
        qrels.write("2 0 p5\n")
    two_queries = tmp_path / "two.jsonl"
    two_queries.write_text("".join(line for line in tiny_groups.read_text().splitlines(keepends=True)
                                   if '"q0"' in line or '"q1"' in line))

    def edit(values: dict) -> None:
        change(values)
        text = json.dumps(values).replace("{trec}", str(trec_dir)).replace("{groups}", str(tiny_groups))
        values.update(json.loads(text.replace("{two_queries}", str(two_queries)).replace("{bad_trec}", str(bad_trec))))

    config = _broken_study(tmp_path, tiny_model_dir, trec_dir, tiny_groups, edit)
    started = time.monotonic()
    assert main(["study", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - started < 30 and len(err.splitlines()) == 1 and "Traceback" not in err
    section, _, leaf = key.rpartition(".")
    assert leaf in err and section in err, err  # e.g. "s.yaml.mechanisms: head_positions ..." or "...: train.train: "
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


def test_the_stages_are_the_ones_the_tests_expect():
    assert list(STAGE_NAMES) == ["zero-shot", "train", *DOWNSTREAM_OF_TRAIN]
