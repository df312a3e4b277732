"""Files in and out: inputs that exist but are not plain files, outputs that cannot be written, config files that
are valid YAML but not valid configs, and the environment (devices, model names). Each answers in one line, exit 2,
with nothing half-written; what should simply work (a pipe as input) works."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from cli_env import env, files_under, run_cli, trained  # noqa: F401 - env, trained: fixtures

from relscope.io import atomic_write_text, output_lock


def _feed_fifo(path: Path, content: str) -> threading.Thread:
    """A named pipe that yields `content` once, as `<(zcat run.gz)` would."""
    os.mkfifo(path)

    def write() -> None:
        with open(path, "w", encoding="utf-8") as pipe:
            pipe.write(content)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_run_and_qrels_given_through_pipes_are_evaluated(env, capsys):
    run = _feed_fifo(env.tmp / "run.pipe", (env.trec / "run.bm25.txt").read_text())
    qrels = _feed_fifo(env.tmp / "qrels.pipe", (env.trec / "qrels.txt").read_text())
    code, errors, err = run_cli(["evaluate", "--qrels", str(env.tmp / "qrels.pipe"), "--run",
                                 str(env.tmp / "run.pipe")], capsys)
    run.join(5), qrels.join(5)
    assert code == 0, err
    direct = run_cli(["evaluate", "--qrels", str(env.trec / "qrels.txt"), "--run", str(env.trec / "run.bm25.txt")],
                     capsys)
    assert direct[0] == 0


def test_a_piped_run_is_reranked_and_its_manifest_says_it_was_not_hashed(env, capsys):
    _feed_fifo(env.tmp / "run.pipe", (env.trec / "run.bm25.txt").read_text())
    code, _, err = run_cli(env.rerank("--run", str(env.tmp / "run.pipe")), capsys)
    assert code == 0, err
    manifest = json.loads((env.out / "manifest.json").read_text())
    assert manifest["data"]["run"]["sha256"] is None  # a pipe is consumed once; hashing it again would hash nothing
    assert len(manifest["data"]["queries"]["sha256"]) == 64


def test_outputs_get_the_permissions_of_an_ordinary_file(tmp_path):
    """mkstemp makes 0600 files: a colleague could not read report.html. Outputs follow the umask instead."""
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.html", "<p>ok</p>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644


def test_a_lock_is_gone_once_its_run_ends(tmp_path):
    with output_lock(tmp_path / "out"):
        assert (tmp_path / "out" / ".relscope.lock").exists()
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("where", ["parent is a file", "under /proc", "is a file"])
def test_an_out_that_cannot_be_a_folder_is_one_line(where, env, capsys):
    blocker = env.write("blocker.txt", "x")
    out = {"parent is a file": blocker / "out", "under /proc": Path("/proc/relscope-no/out"),
           "is a file": blocker}[where]
    code, errors, err = run_cli(["rerank", "--model", str(env.model), "--data", str(env.trec), "--top-k", "3",
                                 "--out", str(out), "--quiet"], capsys)
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert str(out) in errors[0] or str(blocker) in errors[0]


@pytest.mark.parametrize("make", ["a folder", "a missing file"])
def test_an_input_that_is_not_a_file_is_named(make, env, capsys):
    path = env.tmp / "qrels-input"
    if make == "a folder":
        path.mkdir()
    code, errors, err = run_cli(["evaluate", "--qrels", str(path), "--run", str(env.trec / "run.bm25.txt")], capsys)
    assert code == 2 and len(errors) == 1, err
    assert str(path) in errors[0] and ("folder" in errors[0] if make == "a folder" else "not found" in errors[0])


def test_an_input_whose_read_fails_is_one_line(env, capsys):
    """/proc/self/mem opens but every read at offset 0 fails (EIO): an I/O error mid-file, named."""
    code, errors, err = run_cli(["evaluate", "--qrels", "/proc/self/mem", "--run", str(env.trec / "run.bm25.txt")],
                                capsys)
    assert code == 2 and len(errors) == 1 and "/proc/self/mem" in errors[0], err


CONFIGS = {
    "a key given twice": ("max_steps: 2\nmax_steps: 3\n", ("t.yaml:2", "max_steps", "twice", "line 1")),
    "a key that is a number": ("1: 2\n", ("key 1", "not a name")),
    "a key that is a list": ("? [a, b]\n: 1\n", ("t.yaml",)),
    "an alias bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(12))
        + "model: *m\n", ("t.yaml", "aliases")),
    "a list as model name": ("model: &a [a, a, a, a, a, a, a, a, a]\nlora: {rank: *a}\n", ("model", "a string")),
    "a non-finite learning rate": ("learning_rate: .nan\n", ("learning_rate", "finite")),
    "an infinite learning rate": ("learning_rate: .inf\n", ("learning_rate", "finite")),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_config_that_is_yaml_but_no_config_is_one_short_line(name, env, capsys):
    content, expect = CONFIGS[name]
    code, errors, err = run_cli(env.train(env.write("t.yaml", content)), capsys)
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert len(errors[0]) < 600, f"an error line of {len(errors[0])} characters"
    for fragment in expect:
        assert fragment in errors[0], errors[0]
    assert files_under(env.out) == []


def test_an_infinite_value_through_set_is_refused(env, capsys):
    code, errors, err = run_cli(env.train(env.config(), "--set", "learning_rate=.inf"), capsys)
    assert code == 2 and "learning_rate" in errors[0], err


def test_cuda_on_a_machine_without_it_is_one_line(env, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, errors, err = run_cli(env.rerank("--device", "cuda"), capsys)
    assert code == 2 and len(errors) == 1 and "--device cuda" in errors[0] and "cpu" in errors[0], err
    assert files_under(env.out) == []


def test_a_device_that_does_not_exist_is_refused_by_name(env, capsys):
    code, errors, err = run_cli(env.rerank("--device", "gpu0"), capsys)
    assert code == 2 and "gpu0" in errors[0], err


def test_a_mistyped_alias_names_the_aliases_without_a_hub_lookup(env, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # even with the hub allowed, a bare name is not looked up
    code, errors, err = run_cli(["rerank", "--model", "smollm2-135m", "--data", str(env.trec), "--out",
                                 str(env.out)], capsys)
    assert code == 2 and "smollm2-135m-instruct" in errors[0] and "did you mean" in errors[0], err


def test_an_argument_error_is_one_line_with_exit_2(capsys):
    code, errors, err = run_cli_exit(["rerank", "--top-k", "many", "--out", "x"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "--top-k" in err, err


def run_cli_exit(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """argparse exits through SystemExit."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv, capsys)
    err = capsys.readouterr().err.strip()
    return exit_info.value.code, err.splitlines(), err
