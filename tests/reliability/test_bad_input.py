"""The bad-input matrix: every reader, config and CLI entry point fed malformed, empty, truncated, wrongly encoded
or adversarial input answers with ONE line naming the problem (file, line or key) and the fix, exit code 2,
no traceback, and nothing half-written in the output folder.

Each case is (name, how to break the input, the CLI arguments, fragments the error must contain). A case that
raises anything but a relscope error fails the test with the traceback, which is the point.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from relscope.cli import main

from cli_env import env, trained  # noqa: F401 - fixtures: the valid inputs each case breaks

if TYPE_CHECKING:
    from cli_env import Env


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Env], list[str]]
    expect: tuple[str, ...]


def _qrels(env: Env, content: str | bytes) -> list[str]:
    return env.rerank(data=env.trec_with("qrels.txt", content))


def _run(env: Env, content: str | bytes) -> list[str]:
    return env.rerank(data=env.trec_with("run.bm25.txt", content))


def _queries(env: Env, content: str | bytes) -> list[str]:
    return env.rerank(data=env.trec_with("queries.tsv", content))


def _collection(env: Env, content: str | bytes) -> list[str]:
    return env.rerank(data=env.trec_with("collection.tsv", content))


def _groups_file(env: Env, content: str) -> list[str]:
    return env.train(env.config(train=[str(env.write("bad.jsonl", content))]))


def _ablate(env: Env, *variants: str) -> list[str]:
    return ["lora", "ablate", str(env.checkpoint), "--data", str(env.trec), "--top-k", "3", "--out", str(env.out),
            "--variants", *variants]


def _foreign_adapter(env: Env) -> list[str]:
    folder = env.tmp / "foreign"
    shutil.copytree(env.checkpoint, folder)
    meta = json.loads((folder / "relscope.json").read_text())
    meta["model"] = str(env.other_model)
    (folder / "relscope.json").write_text(json.dumps(meta))
    return ["rerank", "--adapter", str(folder), "--data", str(env.trec), "--top-k", "3", "--out", str(env.out)]


def _damaged_checkpoint(env: Env, name: str, content: bytes) -> list[str]:
    folder = env.tmp / f"damaged-{name}"
    shutil.copytree(env.checkpoint, folder)
    (folder / name).write_bytes(content)
    return ["rerank", "--adapter", str(folder), "--data", str(env.trec), "--top-k", "3", "--out", str(env.out)]


def _other_config_in_same_out(env: Env) -> list[str]:
    shutil.copytree(env.checkpoint.parent, env.out)
    return env.train(env.config(lora={"rank": 2}))


LATIN1 = "1\tcaf\xe9 au lait\n".encode("latin-1")
CASES = [
    # TREC files
    Case("qrels: 3 columns", lambda e: _qrels(e, "1 0 p1\n"), ("qrels.txt:1", "expected 4 columns")),
    Case("qrels: grade not an integer", lambda e: _qrels(e, "1 0 p1 high\n"), ("qrels.txt:1", "grade 'high'")),
    Case("qrels: duplicate judgment", lambda e: _qrels(e, "1 0 p1 3\n1 0 p1 2\n"), ("qrels.txt:2", "duplicate")),
    Case("qrels: latin-1 bytes", lambda e: _qrels(e, "1 0 p1 3\n".encode() + b"2 0 p\xe92 1\n"),
         ("qrels.txt:2", "UTF-8", "iconv")),
    Case("qrels: empty", lambda e: _qrels(e, ""), ("qrels.txt", "no judgments")),
    Case("qrels: ids absent from the queries", lambda e: _qrels(e, "77 0 p1 3\n78 0 p2 1\n"),
         ("qrels.txt", "none of the run's", "queries")),
    Case("run: truncated last line", lambda e: _run(e, "1 Q0 p3 1 9.0 bm25\n1 Q0 p1 2"),
         ("run.bm25.txt:2", "expected 6 columns")),
    Case("run: score not a number", lambda e: _run(e, "1 Q0 p3 1 nine bm25\n"), ("run.bm25.txt:1", "score 'nine'")),
    Case("run: passage twice", lambda e: _run(e, "1 Q0 p3 1 9 a\n1 Q0 p3 2 8 a\n"), ("run.bm25.txt:2", "twice")),
    Case("run: empty", lambda e: _run(e, "\n\n"), ("run.bm25.txt", "no ranked passages")),
    Case("run: binary garbage", lambda e: _run(e, b"\x00\xff\xfe\x00garbage"), ("run.bm25.txt:1", "UTF-8")),
    Case("queries: no tab", lambda e: _queries(e, "1 what is the capital of france\n"),
         ("queries.tsv:1", "expected 2 columns")),
    Case("queries: latin-1 bytes", lambda e: _queries(e, LATIN1), ("queries.tsv:1", "UTF-8")),
    Case("queries: run query without text", lambda e: _queries(e, "1\twhat is the capital of france\n"),
         ("query", "2", "queries.tsv")),
    Case("collection: run passage without text", lambda e: _collection(e, "p1\tParis.\n"),
         ("p3", "--on-missing skip")),
    Case("collection: latin-1 bytes", lambda e: _collection(e, b"p1\tcaf\xe9\n"), ("collection.tsv:1", "UTF-8")),
    Case("data folder missing", lambda e: e.rerank(data=e.tmp / "nowhere"), ("nowhere", "not found")),
    Case("run file missing", lambda e: e.rerank("--run", str(e.tmp / "none.trec")), ("none.trec", "missing")),
    Case("rankllm: not JSON", lambda e: ["rerank", "--model", str(e.model), "--rankllm", str(e.write("r.json", "[{")),
                                         "--out", str(e.out)], ("r.json", "JSON")),
    # options
    Case("rerank: top-k 0", lambda e: e.rerank("--top-k", "0"), ("top_k", "positive")),
    Case("rerank: unknown template", lambda e: e.rerank("--template", "chatty"), ("chatty", "yes_no")),
    Case("rerank: unknown measure", lambda e: e.rerank("--measures", "nDCG@ten"), ("nDCG@ten",)),
    Case("rerank: model folder missing", lambda e: e.rerank("--model", str(e.tmp / "no-model")), ("no-model",)),
    Case("rerank: --out is a file", lambda e: e.rerank("--out", str(e.write("file.txt", "x"))),
         ("file.txt", "not a folder")),
    Case("evaluate: unknown measure", lambda e: ["evaluate", "--qrels", str(e.trec / "qrels.txt"), "--run",
                                                str(e.trec / "run.bm25.txt"), "--measures", "P@x"], ("P@x",)),
    Case("fuse: weights do not match runs", lambda e: ["fuse", "--run", str(e.trec / "run.bm25.txt"), "--weights",
                                                      "0.5", "0.5", "--out", str(e.out / "f.trec")], ("weight",)),
    # train configs
    Case("config: YAML syntax error", lambda e: e.train(e.write("t.yaml", "model: [unclosed\nlora: {rank: 2}\n")),
         ("t.yaml", "line")),
    Case("config: not a mapping", lambda e: e.train(e.write("t.yaml", "- a\n- b\n")), ("t.yaml", "mapping")),
    Case("config: empty file", lambda e: e.train(e.write("t.yaml", "")), ("t.yaml",)),
    Case("config: binary", lambda e: e.train(e.write("t.yaml", b"\xff\xfe\x00\x01")), ("t.yaml",)),
    Case("config: misspelt key", lambda e: e.train(e.config(learnig_rate=0.1)), ("learnig_rate", "learning_rate")),
    Case("config: wrong type", lambda e: e.train(e.config(lora={"rank": "eight"})), ("lora.rank", "integer")),
    Case("config: rank 0", lambda e: e.train(e.config(lora={"rank": 0})), ("rank",)),
    Case("config: unknown objective", lambda e: e.train(e.config(objective="triplet")), ("triplet", "listwise")),
    Case("config: unknown target module", lambda e: e.train(e.config(lora={"rank": 4, "targets": ["qq"]})),
         ("qq", "gate")),
    Case("config: layer out of range", lambda e: e.train(e.config(lora={"rank": 4, "layers": [99]})),
         ("99", "3 layers")),
    Case("config: unknown freeze group", lambda e: e.train(e.config(lora={"rank": 4, "freeze": ["top"]})),
         ("top", "early")),
    Case("config: training file missing", lambda e: e.train(e.config(train=[str(e.tmp / "gone.jsonl")])),
         ("gone.jsonl", "not found")),
    Case("config: --set without a value", lambda e: e.train(e.config(), "--set", "lora.rank"), ("lora.rank", "KEY=VALUE")),
    Case("config: 4-bit base without CUDA", lambda e: e.train(e.config(lora={"rank": 4, "quantize_4bit": True})),
         ("quantize_4bit", "CUDA")),
    # training groups
    Case("groups: empty file", lambda e: _groups_file(e, ""), ("bad.jsonl", "no training groups")),
    Case("groups: malformed JSON line", lambda e: _groups_file(e, '{"query": "a", \n'), ("bad.jsonl:1", "JSON")),
    Case("groups: missing query", lambda e: _groups_file(e, json.dumps({"positive_passages": []}) + "\n"),
         ("bad.jsonl:1", "query")),
    Case("groups: no positive", lambda e: _groups_file(e, json.dumps(
        {"query_id": "1", "query": "q", "positive_passages": [], "negative_passages": [{"text": "n"}]}) + "\n"),
        ("bad.jsonl:1", "positive")),
    # checkpoints and adapters
    Case("adapter: made for another base model", _foreign_adapter, ("base",)),
    Case("adapter: not a checkpoint", lambda e: ["rerank", "--adapter", str(e.trec), "--out", str(e.out)],
         ("relscope.json", "adapter_config.json")),
    Case("adapter: truncated weights", lambda e: _damaged_checkpoint(e, "adapter_model.safetensors", b"\x08\x00"),
         ("adapter_model.safetensors",)),
    Case("adapter: corrupt relscope.json", lambda e: _damaged_checkpoint(e, "relscope.json", b"{oops"),
         ("relscope.json",)),
    Case("train: another config in the same --out", _other_config_in_same_out, ("--no-resume",)),
    Case("lora ablate: unknown module set", lambda e: _ablate(e, "mlp-ish"), ("mlp-ish",)),
    Case("lora ablate: layers beyond depth", lambda e: _ablate(e, "mlp-only@5-9"), ("5-9", "3 layers")),
    Case("lora checkpoints: no checkpoints", lambda e: ["lora", "checkpoints", str(e.trec), "--data", str(e.trec),
                                                      "--out", str(e.out)], ("checkpoint",)),
    # mechanism analyses
    Case("patch: inject with a pairwise template", lambda e: _patch(e, "--template", "pairwise", "--perturbation",
                                                                    "inject"), ("inject", "pointwise")),
    Case("patch: groups file missing", lambda e: ["patch", str(e.model), "--groups", str(e.tmp / "none.jsonl"),
                                                  "--out", str(e.out)], ("none.jsonl", "not found")),
    Case("knockout: heads larger than the model", lambda e: _knockout(e, "--size", "999"), ("999", "heads")),
    Case("compare: not a patch folder", lambda e: ["compare", str(e.trec), str(e.trec), "--out", str(e.out)],
         ("ie.npz", "relscope patch")),
    Case("compare: persistence out of range", lambda e: ["compare", str(e.trec), str(e.trec), "--p", "1", "--out",
                                                         str(e.out)], ("--p", "between 0 and 1")),
]


def _patch(env: Env, *extra: str) -> list[str]:
    return ["patch", str(env.model), "--groups", str(env.groups), "--max-pairs", "1", "--out", str(env.out),
            "--quiet", *extra]


def _knockout(env: Env, *extra: str) -> list[str]:
    import numpy as np

    path = env.tmp / "ie_heads.npz"
    np.savez(path, ie=np.zeros((1, 1, 2, 2)), groups=np.array(["last"]), layers=np.array([0, 1]))
    return ["knockout", str(env.model), "--ie-heads", str(path), "--groups", str(env.groups), "--out", str(env.out),
            *extra]


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_clear_error_and_writes_nothing(case, env, capsys):
    argv = case.argv(env)
    before = _files_under(env.out)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("relscope: error:")]
    assert code == 2, f"exit {code}; stderr: {err}"
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in case.expect:
        assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"
    assert _files_under(env.out) == before, "a failed command left files behind"


def test_adversarial_but_valid_text_is_reranked(env, capsys):
    """A 1 MB passage is truncated, control characters are text: both rerank without complaint."""
    huge = "lorem ipsum " * 90_000
    collection = (env.trec / "collection.tsv").read_text().replace("Rivers flow to the sea.", huge[:1_000_000])
    queries = "1\twhat is \x07the capital\x1b of \x0bfrance\n2\twhy are bananas yellow\u200b\u202e\n"
    data = env.trec_with("collection.tsv", collection)
    (data / "queries.tsv").write_text(queries)
    assert main(env.rerank(data=data)) == 0, capsys.readouterr().err
    metrics = json.loads((env.out / "metrics.json").read_text())
    assert metrics["passages_scored"] == 6

