"""Files relscope train wrote and other commands read back (grad_norms.npz, log.jsonl, relscope.json,
trainer_state.json), truncated, damaged or hand-edited with wrong types: every command that reads them
(`dynamics`, `lora checkpoints`, `rerank --adapter`, a resumed `train`) answers with exit 2 and one error line
naming the file, never a traceback, and leaves nothing in its output folder."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_group_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relscope.cli import main


@dataclass(frozen=True)
class Trained:
    run: Path  # a finished tiny run: checkpoint-2/ and -4/, log.jsonl, grad_norms.npz
    config: Path
    trec: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_family_dir) -> Trained:
    tmp = tmp_path_factory.mktemp("artefacts")
    values = dict(model=str(tiny_family_dir("llama")), train=[str(tiny_group_file(tmp))], negatives=2, max_length=96,
                  max_steps=4, batch_size=2, save_steps=2, report_to=[], lora={"rank": 4})
    config = tmp / "train.yaml"
    config.write_text(json.dumps(values))
    assert main(["train", "--config", str(config), "--out", str(tmp / "run"), "--quiet"]) == 0
    return Trained(tmp / "run", config, tmp / "trec")


@pytest.fixture
def data(trained, trec_dir) -> Trained:
    """The trained run with this test's (valid) TREC folder as dev data."""
    return Trained(trained.run, trained.config, trec_dir)


# -- how to break a file ----------------------------------------------------------------------------------------------

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + bytes(range(256)))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def edit_json(**changes) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
    return apply


def write_json(value) -> Callable[[Path], None]:
    return lambda path: path.write_text(json.dumps(value))


def edit_npz(**changes) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del arrays[key]
        with path.open("wb") as f:
            np.savez(f, **arrays)
    return apply


def one_array(path: Path) -> None:
    with path.open("wb") as f:
        np.save(f, np.zeros(3))


def edit_log(transform: Callable[[list[str]], list[str]], end: str = "\n") -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        path.write_text("\n".join(transform(path.read_text().splitlines())) + end)
    return apply


def set_in_line(index: int, **changes) -> Callable[[list[str]], list[str]]:
    def transform(lines: list[str]) -> list[str]:
        training = [i for i, line in enumerate(lines) if '"loss"' in line]
        record = json.loads(lines[training[index]])
        record.update(changes)
        lines[training[index]] = json.dumps(record)
        return lines
    return transform


# -- the commands that read them --------------------------------------------------------------------------------------

def dynamics(run: Path, t: Trained, out: Path) -> list[str]:
    return ["dynamics", str(run), "--window", "1", "--out", str(out)]


def resume(run: Path, t: Trained, out: Path) -> list[str]:
    return ["train", "--config", str(t.config), "--out", str(run), "--quiet"]


def resume_mid(run: Path, t: Trained, out: Path) -> list[str]:
    """A resume from checkpoint-2 (as after a kill before checkpoint-4): it continues checkpoint-2's arrays."""
    shutil.rmtree(run / "checkpoint-4")
    return resume(run, t, out)


def rerank(run: Path, t: Trained, out: Path) -> list[str]:
    return ["rerank", "--adapter", str(run / "checkpoint-4"), "--data", str(t.trec), "--top-k", "3", "--out",
            str(out), "--quiet"]


def checkpoints(run: Path, t: Trained, out: Path) -> list[str]:
    return ["lora", "checkpoints", str(run), "--data", str(t.trec), "--top-k", "3", "--out", str(out)]


CASES = [
    # grad_norms.npz: the run's array (dynamics) and the checkpoint's (a resume continues it)
    ("grad_norms.npz", truncate, dynamics),
    ("grad_norms.npz", garbage, dynamics),
    ("grad_norms.npz", empty, dynamics),
    ("grad_norms.npz", one_array, dynamics),
    ("grad_norms.npz", edit_npz(labels=None), dynamics),
    ("grad_norms.npz", edit_npz(norms=np.ones((4, 3), np.float32)), dynamics),
    ("grad_norms.npz", edit_npz(norms=np.ones((4, 3, 7), np.int64)), dynamics),
    ("grad_norms.npz", edit_npz(steps=np.array([1, 2, 3])), dynamics),
    ("grad_norms.npz", edit_npz(steps=np.array([1.0, 2.0, 3.0, 4.0])), dynamics),
    ("grad_norms.npz", edit_npz(steps=np.array([1, 3, 2, 4])), dynamics),
    ("grad_norms.npz", edit_npz(labels=np.array(["q", "k"])), dynamics),
    ("grad_norms.npz", edit_npz(labels=np.array([object(), 1] * 3 + [None], dtype=object)), dynamics),
    ("grad_norms.npz", edit_npz(norms=np.full((4, 3, 7), np.inf, np.float32)), dynamics),
    ("checkpoint-2/grad_norms.npz", truncate, resume_mid),
    ("checkpoint-2/grad_norms.npz", edit_npz(norms=np.ones((2, 5, 7), np.float32)), resume_mid),
    ("checkpoint-2/grad_norms.npz", edit_npz(labels=np.array(["a", "b", "c", "d", "e", "f", "g"])), resume_mid),
    # log.jsonl: dynamics reads every record; a resume trims it (a damaged line other than a cut last one is an error)
    ("log.jsonl", truncate, dynamics),
    ("log.jsonl", garbage, dynamics),
    ("log.jsonl", edit_log(lambda lines: lines[:1] + ["[1, 2, 3]"] + lines[1:]), dynamics),
    ("log.jsonl", edit_log(set_in_line(1, step="2")), dynamics),
    ("log.jsonl", edit_log(set_in_line(1, step=None)), dynamics),
    ("log.jsonl", edit_log(set_in_line(1, loss="low")), dynamics),
    ("log.jsonl", edit_log(set_in_line(1, loss=float("nan"))), dynamics),
    ("log.jsonl", edit_log(set_in_line(1, accuracy=True)), dynamics),
    ("log.jsonl", edit_log(lambda lines: lines + [lines[0]]), dynamics),
    ("log.jsonl", edit_log(lambda lines: lines[:1] + ["{not json"] + lines[1:]), resume),
    ("log.jsonl", edit_log(set_in_line(0, step=[1])), resume),
    # relscope.json: the checkpoint's base model, template, head and max_length
    ("checkpoint-4/relscope.json", truncate, rerank),
    ("checkpoint-4/relscope.json", garbage, rerank),
    ("checkpoint-4/relscope.json", empty, rerank),
    ("checkpoint-4/relscope.json", write_json([1, 2]), rerank),
    ("checkpoint-4/relscope.json", edit_json(max_length="96"), rerank),
    ("checkpoint-4/relscope.json", edit_json(max_length=2), rerank),
    ("checkpoint-4/relscope.json", edit_json(template=5), rerank),
    ("checkpoint-4/relscope.json", edit_json(template="chatty"), rerank),
    ("checkpoint-4/relscope.json", edit_json(model=["a"]), rerank),
    ("checkpoint-4/relscope.json", edit_json(head="mlp"), rerank),
    ("checkpoint-4/relscope.json", edit_json(base=[1]), rerank),
    ("checkpoint-4/relscope.json", edit_json(checkpoint_files="grad_norms.npz"), rerank),
    ("checkpoint-4/relscope.json", truncate, checkpoints),
    ("checkpoint-4/relscope.json", edit_json(max_length=None, template=None), resume),
    # trainer_state.json: the completeness marker, and what a resume loads
    ("checkpoint-4/trainer_state.json", write_json("done"), resume),
    ("checkpoint-4/trainer_state.json", edit_json(global_step="4"), resume),
    ("checkpoint-4/trainer_state.json", edit_json(global_step=7), resume),
    ("checkpoint-4/trainer_state.json", edit_json(log_history={"loss": 1}), resume),
    ("checkpoint-4/trainer_state.json", edit_json(epoch="one"), resume),
    ("checkpoint-4/trainer_state.json", edit_json(surprise=1), resume),
]


def _name(case) -> str:
    file, breaker, command = case
    how = getattr(breaker, "__name__", "edit")
    return f"{file}-{how}-{command.__name__}"


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{_name(c)}" for i, c in enumerate(CASES)])
def test_a_damaged_artefact_is_one_error_line_naming_it(case, data, tmp_path, capsys):
    """Robustness: every artefact relscope reads back is validated by its one loader."""
    file, breaker, command = case
    run = tmp_path / "run"
    shutil.copytree(data.run, run)
    (run / "summary.json").unlink()  # a resume would otherwise find nothing to do
    breaker(run / file)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(command(run, data, out))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("relscope: error:")]
    assert code == 2, f"exit {code}; stderr: {err[-3000:]}"
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert Path(file).name in lines[0], lines[0]
    assert len(lines[0]) < 600, lines[0]
    assert not [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else True, "a failed command wrote files"


def test_a_log_line_cut_short_by_a_kill_is_dropped_on_resume(trained, tmp_path, capsys):
    """A kill in mid-write leaves a last line without its newline: resume drops it (dynamics names it)."""
    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    (run / "summary.json").unlink()
    log = run / "log.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"step": 5, "loss": 0.')
    assert main(dynamics(run, trained, tmp_path / "dyn")) == 2
    assert "log.jsonl:" in capsys.readouterr().err
    assert main(resume(run, trained, tmp_path)) == 0, capsys.readouterr().err
    assert log.read_text() == whole


@pytest.mark.parametrize("breaker", [truncate, garbage])
def test_a_trainer_state_cut_short_leaves_its_checkpoint_incomplete_and_a_resume_redoes_it(breaker, trained,
                                                                                          tmp_path, capsys):
    """The Trainer writes trainer_state.json in place: a kill mid-write must not block every later resume."""
    from relscope.training.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    (run / "summary.json").unlink()
    breaker(run / "checkpoint-4" / "trainer_state.json")
    assert latest_checkpoint(run).name == "checkpoint-2"
    assert main(resume(run, trained, tmp_path)) == 0, capsys.readouterr().err
    assert latest_checkpoint(run).name == "checkpoint-4"


def test_a_run_trained_before_checkpoints_listed_their_files_still_resumes(trained, tmp_path, capsys):
    """relscope.json without checkpoint_files (older runs): complete when trainer state and grad norms are there."""
    from relscope.training.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    for step in (2, 4):
        meta = run / f"checkpoint-{step}" / "relscope.json"
        data = json.loads(meta.read_text())
        del data["checkpoint_files"]
        meta.write_text(json.dumps(data))
    assert latest_checkpoint(run).name == "checkpoint-4"
    (run / "checkpoint-4" / "grad_norms.npz").unlink()
    assert latest_checkpoint(run).name == "checkpoint-2"


# -- property tests: any content, any value ---------------------------------------------------------------------------

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=12)


@PROPERTY
@given(lines=st.lists(st.one_of(JSON.map(json.dumps), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))),
                      max_size=6), newline=st.booleans())
def test_the_log_reader_returns_checked_records_or_one_relscope_error(tmp_path_factory, lines, newline):
    from relscope.errors import RelscopeError
    from relscope.training.callbacks import read_log

    path = tmp_path_factory.mktemp("log") / "log.jsonl"
    path.write_text("\n".join(lines) + ("\n" if newline else ""), encoding="utf-8", errors="surrogateescape")
    for cut in (False, True):
        try:
            records = read_log(path, drop_cut_last=cut)
        except RelscopeError as err:
            assert "log.jsonl" in str(err) and "\n" not in str(err)
            continue
        assert all(isinstance(r, dict) and isinstance(r["step"], int) and r["step"] >= 0 for r in records)


@PROPERTY
@given(meta=JSON, state=JSON, content=st.binary(max_size=200))
def test_checkpoint_readers_accept_or_reject_anything_with_one_relscope_error(tmp_path_factory, meta, state, content):
    from relscope.errors import RelscopeError
    from relscope.training.callbacks import load_grad_norms
    from relscope.training.checkpoint import read_trainer_state
    from relscope.models.adapters import read_meta

    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint-4"
    folder.mkdir()
    (folder / "relscope.json").write_text(json.dumps(meta))
    (folder / "trainer_state.json").write_text(json.dumps(state))
    (folder / "grad_norms.npz").write_bytes(content)
    for reader in (read_meta, read_trainer_state, lambda f: load_grad_norms(f / "grad_norms.npz")):
        try:
            reader(folder)
        except RelscopeError as err:
            assert "\n" not in str(err) and len(str(err)) < 600


NUMERIC = ["negatives", "max_length", "max_steps", "batch_size", "grad_accum", "save_steps", "logging_steps",
           "save_total_limit", "warmup_steps", "min_grade", "seed", "learning_rate", "weight_decay", "max_grad_norm",
           "hard_fraction", "lora.rank", "lora.alpha", "lora.dropout", "dev.top_k", "dev.max_queries"]


@PROPERTY
@given(key=st.sampled_from(NUMERIC), value=st.one_of(st.integers(-2**70, 2**70), st.floats(), st.booleans(),
                                                     st.text(max_size=8), st.none()))
def test_every_numeric_train_option_is_accepted_in_range_or_refused_naming_its_key(key, value):
    """Out-of-range, non-finite or mistyped values: one ConfigError naming the key, nothing else."""
    from relscope.config import from_mapping
    from relscope.errors import ConfigError
    from relscope.training.config import TrainConfig

    values: dict = {"train": ["groups.jsonl"], "dev": {"data": "dev"}}
    section, _, leaf = key.rpartition(".")
    (values.setdefault(section, {}) if section else values)[leaf] = value
    try:
        config = from_mapping(TrainConfig, values, "train.yaml")
    except ConfigError as err:
        assert leaf in str(err) and "\n" not in str(err), str(err)
        return
    stored = getattr(getattr(config, section) if section else config, leaf)
    assert stored is None or (not isinstance(stored, bool) and math.isfinite(stored)), (key, value)
