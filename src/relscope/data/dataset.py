"""A reranking dataset: queries, passages, qrels and a first-stage run, from a TREC folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from relscope.data.lines import is_input_file
from relscope.data.msmarco import read_texts
from relscope.data.rankllm import read_rankllm
from relscope.data.trec import read_qrels, read_run
from relscope.data.types import Qrels, Run
from relscope.errors import DataError, where

DATA_HELP = (
    "relscope needs TREC Deep Learning passage data in one folder per year, e.g. "
    "<data>/trec-dl-2019/ with queries.tsv (qid<TAB>text), collection.tsv (pid<TAB>text), "
    "qrels.txt (TREC qrels) and run.bm25.txt (TREC run, BM25 top-100). Get them from the "
    "TREC DL / MS MARCO releases (msmarco.org, trec.nist.gov) or with ir_datasets "
    "(`msmarco-passage/trec-dl-2019/judged`: queries, qrels, docs, and Pyserini's BM25 run), "
    "then point --data or RELSCOPE_DATA at the folder."
)

# The data relscope's defaults point at (in $RELSCOPE_DATA: see its README).
DL19 = "$RELSCOPE_DATA/trec-dl-2019"  # TREC DL 2019, BM25 top-100 with text: the dev run every figure is measured on
RELEVANCE_GROUPS = "$RELSCOPE_DATA/relevance-mi/msmarco.jsonl"  # the patching study's 183 MS MARCO queries


def data_root() -> Path:
    """RELSCOPE_DATA, else ../shared/data (the layout of the project's own machines)."""
    return Path(os.environ.get("RELSCOPE_DATA", "../shared/data"))


def data_path(value: str | Path) -> Path:
    """A path from a config: a leading $RELSCOPE_DATA (or ${RELSCOPE_DATA}) means data_root()."""
    text = str(value)
    for prefix in ("${RELSCOPE_DATA}", "$RELSCOPE_DATA"):
        if text.startswith(prefix):
            return data_root() / text[len(prefix):].lstrip("/")
    return Path(text)


@dataclass
class RerankDataset:
    """Everything a rerank-and-evaluate job reads, with where it came from."""

    queries: dict[str, str]
    passages: dict[str, str]
    run: Run
    qrels: Qrels | None
    files: dict[str, Path] = field(default_factory=dict)
    missing: list[tuple[str, str, int]] = field(default_factory=list)  # (qid, pid, run line)

    def first_queries(self, n: int | None) -> RerankDataset:
        """The first `n` queries of the run (all when n is None), for a quicker signal on the same data."""
        return self if not n else replace(self, run={q: self.run[q] for q in list(self.run)[:n]})


def resolve_files(
    data: Path | None,
    queries: Path | None = None,
    collection: Path | None = None,
    qrels: Path | None = None,
    run: Path | None = None,
) -> dict[str, Path]:
    """Explicit files win; the rest come from the standard names inside `data`."""
    defaults = {"queries": "queries.tsv", "collection": "collection.tsv", "qrels": "qrels.txt", "run": "run.bm25.txt"}
    given = {"queries": queries, "collection": collection, "qrels": qrels, "run": run}
    if data is not None and not Path(data).is_dir() and any(v is None for v in given.values()):
        raise DataError(f"{data}: data folder not found. {DATA_HELP}")
    files = {k: Path(v) if v is not None else Path(data) / defaults[k] for k, v in given.items() if v or data}
    absent = [k for k in ("queries", "collection", "run") if k not in files or not is_input_file(files[k])]
    if absent:
        missing = ", ".join(str(files.get(k, k)) for k in absent)
        raise DataError(f"missing {missing}. {DATA_HELP}")
    if "qrels" in files and not is_input_file(files["qrels"]):
        del files["qrels"]  # evaluation is optional: a run can be reranked without judgments
    return files


def load_rerank_dataset(files: dict[str, Path], top_k: int, on_missing: str = "error") -> RerankDataset:
    """Read the run's top-k and only the passages it needs.

    A run passage absent from the collection is an error by default; with
    on_missing="skip" it is counted, reported and kept below the reranked ones.
    """
    _check_top_k(top_k)
    run = read_run(files["run"])
    queries = read_texts(files["queries"], "query")
    unknown = [q for q in run if q not in queries]
    if unknown:
        line = run[unknown[0]][0].line
        raise DataError(
            f"{where(files['run'], line)}: query {unknown[0]} is not in {files['queries']} "
            f"({len(unknown)} such queries); use the queries file that matches the run"
        )
    wanted = {d.pid for docs in run.values() for d in docs[:top_k]}
    passages = read_texts(files["collection"], "passage", keep=wanted)
    missing = [(q, d.pid, d.line) for q, docs in run.items() for d in docs[:top_k] if d.pid not in passages]
    if missing and on_missing == "error":
        qid, pid, line = missing[0]
        raise DataError(
            f"{where(files['run'], line)}: passage {pid} (query {qid}) is not in {files['collection']}; "
            f"{len(missing)} of the top-{top_k} passages lack text. Use the collection that matches "
            "the run, or pass --on-missing skip to rerank the rest and keep these below them"
        )
    qrels = read_matching_qrels(files["qrels"], run) if "qrels" in files else None
    return RerankDataset(queries, passages, run, qrels, dict(files), missing)


def load_rankllm_dataset(path: Path, top_k: int, qrels: Path | None = None) -> RerankDataset:
    """A rank_llm request file carries queries, the run and passage text in one json."""
    _check_top_k(top_k)
    data = read_rankllm(path)
    files = {"rankllm": Path(path), **({"qrels": Path(qrels)} if qrels else {})}
    judged = read_matching_qrels(Path(qrels), data.run) if qrels else None
    return RerankDataset(data.queries, data.passages, data.run, judged, files)


def read_matching_qrels(path: Path, run: Run) -> Qrels:
    """Qrels that judge at least one of the run's queries: judgments of other queries only mean the wrong file."""
    qrels = read_qrels(path)
    if not any(q in qrels for q in run):
        raise DataError(f"{path}: judges none of the run's {len(run)} queries (it judges {', '.join(list(qrels)[:3])}"
                        f"{' ...' if len(qrels) > 3 else ''}); use the qrels of the run's queries, or leave them out")
    return qrels


def _check_top_k(top_k: int) -> None:
    if top_k <= 0:
        raise DataError(f"top_k must be a positive integer, got {top_k}")
