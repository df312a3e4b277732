"""Data-parallel training through `accelerate launch` gives the loss curve of one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ACCELERATE = Path(sys.executable).with_name("accelerate")


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _losses(out: Path) -> list[float]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


@pytest.mark.skipif(not ACCELERATE.is_file() or shutil.which("python") is None, reason="accelerate CLI missing")
def test_two_processes_match_one_with_the_same_global_batch(tiny_family_dir, tiny_groups, tmp_path):
    base = dict(model=str(tiny_family_dir("llama")), train=[str(tiny_groups)], objective="yes_no", negatives=2,
                max_length=96, max_steps=4, save_steps=4, learning_rate=1e-2, report_to=[],
                lora={"rank": 4, "dropout": 0.0},
                bf16="no")  # float32: on a CPU with AMX, bf16 autocast rounds 2 half batches apart from 1 whole one
    single, double = tmp_path / "single.yaml", tmp_path / "double.yaml"
    single.write_text(yaml.safe_dump({**base, "batch_size": 4}))
    double.write_text(yaml.safe_dump({**base, "batch_size": 2}))  # x 2 processes = the same 4 groups a step

    _run([sys.executable, "-m", "relscope", "train", "--config", str(single), "--out", str(tmp_path / "one"),
          "--quiet"], tmp_path)
    # On a machine without GPUs, --multi_gpu starts N gloo processes on the CPU (torchrun underneath).
    # (`--cpu --num_processes 2` is not the same: Accelerate 1.x then runs a single process unless given mpirun.)
    _run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "relscope", "train", "--config", str(double),
          "--out", str(tmp_path / "two"), "--quiet"], tmp_path)

    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert one[-1] != one[0]  # the steps really updated the adapter


@pytest.mark.skipif(not ACCELERATE.is_file(), reason="accelerate CLI missing")
def test_patching_split_across_two_processes_equals_one(tiny_family_dir, tiny_groups, tmp_path):
    import numpy as np

    args = ["patch", str(tiny_family_dir("llama")), "--groups", str(tiny_groups), "--max-pairs", "3", "--min-gap",
            "0", "--components", "resid_pre", "mlp", "--heads", "--attribution", "atp", "--validate", "--quiet"]
    _run([sys.executable, "-m", "relscope", *args, "--out", str(tmp_path / "one")], tmp_path)
    _run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "relscope", *args, "--out",
          str(tmp_path / "two")], tmp_path)
    for name in ("ie.npz", "ie_heads.npz", "ie_atp.npz"):
        one, two = np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)
        assert one["ie"].shape[0] == 3 and np.array_equal(one["ie"], two["ie"]), name
    assert list(np.load(tmp_path / "two" / "ie.npz")["qids"]) == list(np.load(tmp_path / "one" / "ie.npz")["qids"])
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2
