"""rank_llm request json: `[{"query": {"text", "qid"}, "candidates": [{"docid", "score", "doc": {...}}]}]`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relscope.data.lines import read_input_text
from relscope.data.types import Run, ScoredDoc
from relscope.errors import DataError
from relscope.io import atomic_write_json

# Keys under which rank_llm files keep passage text (v1 "contents", v2 "segment").
TEXT_KEYS = ("contents", "text", "segment", "body")


@dataclass(frozen=True)
class RankLLMData:
    queries: dict[str, str]
    run: Run
    passages: dict[str, str]


def read_rankllm(path: str | Path) -> RankLLMData:
    """The queries, first-stage run and passage texts of a rank_llm request file, each request checked."""
    try:
        requests = json.loads(read_input_text(path, "rank_llm json"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); fix the file") from None
    if not isinstance(requests, list):
        raise DataError(f"{path}: expected a JSON list of requests ({{'query', 'candidates'}})")
    queries: dict[str, str] = {}
    run: Run = {}
    passages: dict[str, str] = {}
    for i, request in enumerate(requests):
        qid, text = _query(request, path, i)
        if qid in queries:
            raise DataError(f"{path}: request [{i}] repeats query id {qid}; ids must be unique")
        queries[qid] = text
        run[qid] = [_candidate(c, path, i, j, passages) for j, c in enumerate(request.get("candidates", []))]
        pids = [d.pid for d in run[qid]]
        if len(set(pids)) < len(pids):
            twice = next(p for p in pids if pids.count(p) > 1)
            raise DataError(f"{path}: request [{i}] lists candidate {twice!r} twice; a ranking lists each passage once")
    return RankLLMData(queries, run, passages)


def write_rankllm(run: Run, queries: dict[str, str], passages: dict[str, str], path: str | Path) -> None:
    """`run` with its query and passage texts as a rank_llm request file, for rerankers that read that format."""
    requests = [
        {
            "query": {"text": queries[qid], "qid": qid},
            "candidates": [{"docid": d.pid, "score": d.score, "doc": {"contents": passages[d.pid]}} for d in docs],
        }
        for qid, docs in run.items()
    ]
    atomic_write_json(path, requests)


def _query(request: Any, path: Path, i: int) -> tuple[str, str]:
    query = request.get("query") if isinstance(request, dict) else None
    if not isinstance(query, dict) or "qid" not in query or not str(query.get("text", "")).strip():
        raise DataError(f"{path}: request [{i}] needs 'query': {{'qid': ..., 'text': non-empty}}")
    return str(query["qid"]), str(query["text"]).strip()


def _candidate(c: Any, path: Path, i: int, j: int, passages: dict[str, str]) -> ScoredDoc:
    loc = f"{path}: request [{i}] candidate [{j}]"
    if not isinstance(c, dict) or "docid" not in c or not isinstance(c.get("doc"), dict):
        raise DataError(f"{loc} needs 'docid' and a 'doc' object")
    doc = c["doc"]
    body = next((doc[k] for k in TEXT_KEYS if isinstance(doc.get(k), str) and doc[k].strip()), None)
    if body is None:
        raise DataError(f"{loc} has no passage text under any of {', '.join(TEXT_KEYS)}")
    title = doc.get("title")
    pid = str(c["docid"])
    passages[pid] = f"{title.strip()}: {body.strip()}" if isinstance(title, str) and title.strip() else body.strip()
    try:
        score = float(c.get("score", -j))
    except (TypeError, ValueError, OverflowError):
        score = math.nan
    if not math.isfinite(score):
        raise DataError(f"{loc}: score {str(c.get('score'))[:40]!r} is not a finite number")
    return ScoredDoc(pid, score)
