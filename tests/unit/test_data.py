"""Readers and writers round-trip; every malformed input names file, line and fix."""

from __future__ import annotations

import json

import pytest

from relscope.data import (
    NegativePassage,
    ScoredDoc,
    TrainingGroup,
    read_groups,
    read_qrels,
    read_rankllm,
    read_run,
    read_texts,
    write_groups,
    write_qrels,
    write_rankllm,
    write_run,
    write_texts,
)
from relscope.data.dataset import load_rerank_dataset, resolve_files
from relscope.errors import DataError


def test_qrels_round_trip(tmp_path):
    qrels = {"1": {"a": 3, "b": 0}, "2": {"c": 1}}
    write_qrels(qrels, tmp_path / "q.txt")
    assert read_qrels(tmp_path / "q.txt") == qrels


def test_run_round_trip_orders_by_score_and_recomputes_ranks(tmp_path):
    path = tmp_path / "run.txt"
    path.write_text("1 Q0 a 2 1.5 t\n1 Q0 b 1 2.5 t\n\n1 Q0 c 3 0.5 t\n")
    run = read_run(path)
    assert [d.pid for d in run["1"]] == ["b", "a", "c"]
    write_run(run, tmp_path / "out.txt", tag="x")
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert lines[0] == "1 Q0 b 1 2.500000 x"
    assert [d.pid for d in read_run(tmp_path / "out.txt")["1"]] == ["b", "a", "c"]


def test_run_ties_keep_first_stage_rank(tmp_path):
    path = tmp_path / "run.txt"
    path.write_text("1 Q0 z 1 1.0 t\n1 Q0 a 2 1.0 t\n")
    assert [d.pid for d in read_run(path)["1"]] == ["z", "a"]


def test_texts_round_trip_and_keep_filter(tmp_path):
    write_texts({"1": "hello world", "2": "tab\tinside"}, tmp_path / "c.tsv")
    assert read_texts(tmp_path / "c.tsv") == {"1": "hello world", "2": "tab inside"}
    assert read_texts(tmp_path / "c.tsv", keep={"2"}) == {"2": "tab inside"}


def test_groups_round_trip(tmp_path):
    groups = [TrainingGroup("q1", "query", ("pos",), (NegativePassage("neg", "random", "p9"),))]
    write_groups(groups, tmp_path / "g.jsonl")
    assert read_groups(tmp_path / "g.jsonl") == groups


def test_rankllm_round_trip(tmp_path):
    run = {"1": [ScoredDoc("a", 2.0), ScoredDoc("b", 1.0)]}
    write_rankllm(run, {"1": "q text"}, {"a": "A text", "b": "B text"}, tmp_path / "r.json")
    data = read_rankllm(tmp_path / "r.json")
    assert data.queries == {"1": "q text"}
    assert [(d.pid, d.score) for d in data.run["1"]] == [("a", 2.0), ("b", 1.0)]
    assert data.passages == {"a": "A text", "b": "B text"}


BAD_FILES = [
    # (reader, content, words the message must contain)
    (read_qrels, "1 0 a\n", ["x.txt:1", "expected 4 columns"]),
    (read_qrels, "1 0 a 3\n1 0 a high\n", ["x.txt:2", "not an integer"]),
    (read_qrels, "1 0 a 3\n1 0 a 2\n", ["x.txt:2", "duplicate judgment"]),
    (read_run, "1 Q0 a 1 2.0\n", ["x.txt:1", "expected 6 columns"]),
    (read_run, "1 Q0 a one 2.0 t\n", ["x.txt:1", "rank"]),
    (read_run, "1 Q0 a 1 2.0 t\n1 Q0 a 2 1.0 t\n", ["x.txt:2", "appears twice", "first on line 1"]),
    (lambda p: read_texts(p, "passage"), "1\ttext\n1\tagain\n", ["x.txt:2", "duplicate id 1"]),
    (lambda p: read_texts(p, "passage"), "1\ttext\n2\t   \n", ["x.txt:2", "empty text"]),
    (lambda p: read_texts(p, "passage"), "1\ttext\textra\n", ["x.txt:1", "expected 2 columns"]),
    (lambda p: read_texts(p, "passage"), "no tab here\n", ["x.txt:1", "expected 2 columns"]),
    (read_groups, "{not json\n", ["x.txt:1", "not valid JSON"]),
    (read_groups, '{"query_id": 1, "query": "q"}\n', ["x.txt:1", "positive_passages"]),
    (read_groups, '{"query_id": 1, "query": "q", "positive_passages": []}\n', ["x.txt:1", "no positive"]),
    (read_groups, '{"query_id": 1, "query": "", "positive_passages": [{"text": "p"}]}\n', ["x.txt:1", "query"]),
    (read_groups, '{"query_id": 1, "query": "q", "positive_passages": [{"text": 3}]}\n', ["x.txt:1", "positive"]),
]


@pytest.mark.parametrize("reader,content,words", BAD_FILES)
def test_malformed_input_names_file_line_and_problem(tmp_path, reader, content, words):
    path = tmp_path / "x.txt"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        reader(path)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("reader", [read_qrels, read_run, read_texts, read_groups])
def test_undecodable_bytes_name_the_line_and_the_fix(tmp_path, reader):
    path = tmp_path / "x.txt"
    path.write_bytes("caf\u00e9 1 2 3\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"x\.txt:1: .*not valid UTF-8.*iconv"):
        reader(path)


def test_rankllm_bad_json_and_missing_text(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_rankllm(path)
    path.write_text(json.dumps([{"query": {"qid": 1, "text": "q"}, "candidates": [{"docid": "a", "doc": {}}]}]))
    with pytest.raises(DataError, match="candidate \\[0\\] has no passage text"):
        read_rankllm(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="qrels file not found"):
        read_qrels(tmp_path / "absent.txt")


def test_dataset_reads_only_top_k_passages(trec_dir):
    data = load_rerank_dataset(resolve_files(trec_dir), top_k=2)
    assert set(data.passages) == {"p3", "p1", "p4", "p2"}
    assert data.qrels["1"]["p1"] == 3
    assert data.missing == []


def test_run_passage_missing_from_collection_is_an_error_naming_the_run_line(trec_dir):
    with (trec_dir / "run.bm25.txt").open("a") as f:
        f.write("2 Q0 ghost 4 2.0 bm25\n")
    with pytest.raises(DataError, match=r"run\.bm25\.txt:8: passage ghost .*--on-missing skip"):
        load_rerank_dataset(resolve_files(trec_dir), top_k=10)
    data = load_rerank_dataset(resolve_files(trec_dir), top_k=10, on_missing="skip")
    assert data.missing == [("2", "ghost", 8)]


def test_run_query_missing_from_queries_is_an_error(trec_dir):
    with (trec_dir / "run.bm25.txt").open("a") as f:
        f.write("3 Q0 p1 1 2.0 bm25\n")
    with pytest.raises(DataError, match="query 3 is not in"):
        load_rerank_dataset(resolve_files(trec_dir), top_k=10)


def test_absent_data_folder_says_what_data_and_where_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        resolve_files(tmp_path / "nowhere")
    message = str(err.value)
    for words in ("queries.tsv", "collection.tsv", "qrels.txt", "run.bm25.txt", "ir_datasets", "RELSCOPE_DATA"):
        assert words in message


def test_a_rerank_config_data_folder_may_start_with_relscope_data(trec_dir, monkeypatch):
    from relscope.evaluation.settings import RerankConfig
    from relscope.evaluation.job import dataset_files

    monkeypatch.setenv("RELSCOPE_DATA", str(trec_dir.parent))
    files = dataset_files(RerankConfig(data=f"$RELSCOPE_DATA/{trec_dir.name}"))
    assert files["run"] == trec_dir / "run.bm25.txt" and files["qrels"].is_file()
    explicit = dataset_files(RerankConfig(data=str(trec_dir), qrels=f"${{RELSCOPE_DATA}}/{trec_dir.name}/qrels.txt"))
    assert explicit["qrels"] == trec_dir / "qrels.txt"
