"""`relscope --help`, `relscope <command> --help` and argument errors answer without importing torch or transformers
(they take seconds to import; a user asking for help should not wait for them)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "accelerate", "sklearn", "matplotlib")

COMMANDS = ["study", "rerank", "evaluate", "groups", "fuse", "train", "lora", "lora checkpoints", "lora sweep-rank",
            "lora ablate", "lora stats", "dynamics", "patch", "heads", "knockout", "compare", "freeze", "probe",
            "attention"]

ERRORS = [
    ["patch", "--max-pairs", "many", "--out", "x"],  # argparse: not a number
    ["rerank", "--top-k", "0", "--out", "x"],  # the settings dataclass: out of range
    ["compare", "a", "b", "--p", "2", "--out", "x"],
    ["fuse", "--run", "a", "--weights", "1", "--out", "x"],  # one run: fusion needs two
    ["groups", "--data", "nowhere", "--negatives", "0", "--out", "x.jsonl"],
    ["evaluate", "--qrels", "q", "--run", "r", "--measures", "nDCG@0"],
    ["knockout", "--out", "x"],  # --ie-heads is required
    ["nonsense"],
]

PROBE = """
import json, sys
from relscope.cli import main
heavy, codes = {heavy}, []
for argv in {argvs}:
    try:
        codes.append(main(argv))
    except SystemExit as exit:
        codes.append(exit.code)
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))
    if loaded:
        print(json.dumps({{"argv": argv, "loaded": loaded}}))
        break
print(json.dumps({{"codes": codes}}))
"""


def _run(argvs: list[list[str]]) -> tuple[list[dict], str]:
    code = PROBE.format(heavy=HEAVY, argvs=argvs)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return lines, done.stderr


def test_help_imports_neither_torch_nor_transformers():
    lines, stderr = _run([["--help"], *([*c.split(), "--help"] for c in COMMANDS)])
    assert "loaded" not in lines[0], f"{lines[0]['argv']} imported {lines[0]['loaded']}"
    assert lines[-1]["codes"] == [0] * (len(COMMANDS) + 1), stderr[-2000:]


def test_argument_errors_import_neither_torch_nor_transformers():
    lines, stderr = _run(ERRORS)
    assert "loaded" not in lines[0], f"{lines[0]['argv']} imported {lines[0]['loaded']}"
    assert lines[-1]["codes"] == [2] * len(ERRORS), stderr[-2000:]
    assert stderr.count("error:") == len(ERRORS) and "Traceback" not in stderr, stderr[-2000:]
