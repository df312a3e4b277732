from __future__ import annotations

import json

import pytest

from relscope.data import ScoredDoc
from relscope.data.training import build_groups
from relscope.errors import DataError

QUERIES = {"1": "capital of france", "2": "yellow bananas", "3": "no positives here"}
PASSAGES = {f"p{i}": f"passage number {i}" for i in range(20)}
QRELS = {
    "1": {"p0": 3, "p1": 2, "p2": 1, "p3": 0, "p4": 0, "ghost": 3},
    "2": {"p5": 2, "p6": 0},
    "3": {"p7": 1},
}
RUN = {"1": [ScoredDoc(p, 10 - i) for i, p in enumerate(["p3", "p0", "p8", "p2", "p9"])]}


def test_groups_have_one_positive_and_the_asked_negatives():
    groups, report = build_groups(QUERIES, QRELS, PASSAGES, RUN, negatives=3, seed=1)
    assert [(g.qid, g.positives[0]) for g in groups] == [
        ("1", "passage number 0"), ("1", "passage number 1"), ("2", "passage number 5")]
    assert all(len(g.negatives) == 3 for g in groups)
    assert report.skipped_missing_text == 1 and report.queries_without_positive == 1
    for g in groups:  # never a passage judged relevant (grade >= 1) as a negative
        judged = QRELS[g.qid]
        assert all(judged.get(n.pid, 0) == 0 for n in g.negatives)
    hard = [n.pid for n in groups[0].negatives if n.kind == "hard"]
    assert set(hard) <= {"p3", "p8", "p9"}  # from the run: judged 0 or unjudged, never p2 (grade 1)


def test_without_a_run_hard_negatives_are_the_judged_zero_passages():
    groups, _ = build_groups(QUERIES, QRELS, PASSAGES, negatives=4, seed=0)
    first = groups[0]
    assert {n.pid for n in first.negatives if n.kind == "hard"} == {"p3", "p4"}
    assert sum(n.kind == "random" for n in first.negatives) == 2


def test_same_seed_same_groups_other_seed_other_groups():
    a, _ = build_groups(QUERIES, QRELS, PASSAGES, negatives=5, hard_fraction=0.0, seed=7)
    b, _ = build_groups(QUERIES, QRELS, PASSAGES, negatives=5, hard_fraction=0.0, seed=7)
    c, _ = build_groups(QUERIES, QRELS, PASSAGES, negatives=5, hard_fraction=0.0, seed=8)
    assert a == b and a != c


def test_empty_training_set_and_bad_arguments_fail_clearly():
    with pytest.raises(DataError, match="no training groups"):
        build_groups(QUERIES, {"3": {"p7": 1}}, PASSAGES)
    with pytest.raises(DataError, match="negatives >= 1"):
        build_groups(QUERIES, QRELS, PASSAGES, negatives=0)
    with pytest.raises(DataError, match="query 9 is judged"):
        build_groups(QUERIES, {"9": {"p1": 2}}, PASSAGES)


@pytest.mark.slow
def test_real_dl21_and_dl23_groups(real_data):
    from relscope.data import read_qrels, read_run, read_texts

    for year, has_run in (("trec-dl-2021", True), ("trec-dl-2023", False)):
        folder = real_data / year
        run = read_run(folder / "run.bm25.txt") if has_run else None
        groups, report = build_groups(read_texts(folder / "queries.tsv"), read_qrels(folder / "qrels.txt"),
                                      read_texts(folder / "collection.tsv"), run, negatives=7)
        assert report.groups == len(groups) > 100 and report.skipped_missing_text > 0
        graded, _ = build_groups(read_texts(folder / "queries.tsv"), read_qrels(folder / "qrels.txt"),
                                 read_texts(folder / "collection.tsv"), run, negatives=7, graded=True)
        assert [g.positives for g in graded] == [g.positives for g in groups]  # the same positives, one group each
        qrels = read_qrels(folder / "qrels.txt")
        for g in graded:  # each negative's grade is its judged one, below the positive's
            assert all(n.grade == qrels[g.qid].get(n.pid, 0) < g.positive_grades[0] for n in g.negatives)
        top = [g for g in graded if g.positive_grades == (3,)]
        assert sum(any(n.grade == 2 for n in g.negatives) for g in top) > len(top) / 2


def test_cli_groups_writes_tevatron_jsonl(trec_dir, tmp_path, capsys):
    from relscope.cli import main
    from relscope.data import read_groups

    assert main(["groups", "--data", str(trec_dir), "--negatives", "2", "--out", str(tmp_path / "g.jsonl")]) == 0
    groups = read_groups(tmp_path / "g.jsonl")
    # every hard negative of the run (3 and 2 here): training draws --negatives of them anew each epoch
    assert len(groups) == 2 and [len(g.negatives) for g in groups] == [3, 2]
    assert "2 groups" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "g.jsonl.manifest.json").read_text())  # settings, inputs, each folder's report
    assert manifest["config"] == {"data": [str(trec_dir)], "negatives": 2, "hard_fraction": 1.0, "min_grade": 2,
                                  "seed": 0, "graded": False}
    assert manifest["groups"] == 2 and manifest["reports"][str(trec_dir)]["groups"] == 2
    assert manifest["data"][f"{trec_dir}/qrels.txt"]["sha256"]


def test_graded_groups_take_the_lower_graded_passages_as_negatives_with_their_grades():
    groups, _ = build_groups(QUERIES, QRELS, PASSAGES, RUN, negatives=3, seed=1, graded=True)
    by_positive = {g.positives[0]: g for g in groups}
    top = by_positive["passage number 0"]  # grade 3: grades 2 and 1 of its query are partly relevant negatives
    assert top.positive_grades == (3,)
    assert {(n.pid, n.grade) for n in top.negatives if n.grade} == {("p1", 2), ("p2", 1)}
    second = by_positive["passage number 1"]  # grade 2: only the grade-1 passage, never an equal or better one
    assert second.positive_grades == (2,)
    assert {(n.pid, n.grade) for n in second.negatives if n.grade} == {("p2", 1)}
    for g in groups:  # every other negative is judged 0 or unjudged, and says so
        assert all(n.grade == QRELS[g.qid].get(n.pid, 0) for n in g.negatives)
        assert all(n.grade < g.positive_grades[0] for n in g.negatives)


def test_ungraded_groups_are_as_before():
    plain, _ = build_groups(QUERIES, QRELS, PASSAGES, RUN, negatives=3, seed=1)
    assert all(not g.positive_grades and all(n.grade == 0 for n in g.negatives) for g in plain)


def test_graded_groups_round_trip_through_jsonl_and_a_bad_grade_names_its_line(tmp_path):
    from relscope.data.groups import read_groups, write_groups

    groups, _ = build_groups(QUERIES, QRELS, PASSAGES, RUN, negatives=3, seed=1, graded=True)
    path = tmp_path / "groups.jsonl"
    write_groups(groups, path)
    assert read_groups(path) == groups
    record = json.loads(path.read_text().splitlines()[0])
    record["negative_passages"][0]["grade"] = 3  # as relevant as the positive: not a negative
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"groups.jsonl:1: .*grade 3"):
        read_groups(path)
    record["negative_passages"][0]["grade"] = "high"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"groups.jsonl:1: negative_passages\[0\].grade: 'high'"):
        read_groups(path)


def test_cli_groups_graded_writes_each_passages_grade(trec_dir, tmp_path):
    from relscope.cli import main
    from relscope.data import read_groups

    assert main(["groups", "--data", str(trec_dir), "--graded", "--min-grade", "1", "--out",
                 str(tmp_path / "g.jsonl")]) == 0
    groups = read_groups(tmp_path / "g.jsonl")  # the tiny qrels: p1 grade 3 (query 1), p2 grade 2 (query 2)
    assert sorted(g.positive_grades for g in groups) == [(2,), (3,)]
    assert all(n.grade == 0 for g in groups for n in g.negatives)  # no lower-graded passage above 0 in these qrels


def test_graded_negatives_are_refused_where_they_would_be_trained_as_irrelevant(tmp_path):
    from relscope.data.groups import read_groups, write_groups
    from relscope.data.training import load_training_groups

    groups, _ = build_groups(QUERIES, QRELS, PASSAGES, RUN, negatives=3, seed=1, graded=True)
    path = tmp_path / "graded.jsonl"
    write_groups(groups, path)
    with pytest.raises(DataError, match=r"graded.jsonl: holds partly relevant negatives .* graded_listwise"):
        load_training_groups((str(path),), negatives=3)
    assert load_training_groups((str(path),), negatives=3, graded=True) == groups
    record = json.loads(path.read_text().splitlines()[0])  # positives without grades, a negative with one
    for passage in record["positive_passages"]:
        passage.pop("grade")
    record["negative_passages"][0]["grade"] = 2
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"graded.jsonl:1: a negative has grade 2 but the positives have none"):
        read_groups(path)


def test_analyses_never_take_a_partly_relevant_passage_as_the_negative():
    from relscope.data.groups import NegativePassage, TrainingGroup, first_negative

    group = TrainingGroup("1", "q", ("best",), (NegativePassage("related", "hard", "a", 2),
                                                 NegativePassage("unrelated", "hard", "b", 0)), (3,))
    assert first_negative(group) == "unrelated" and first_negative(group, "any") == "unrelated"


def test_graded_listwise_needs_hard_negatives():
    from relscope.config import from_mapping
    from relscope.training.config import TrainConfig

    from relscope.errors import ConfigError

    with pytest.raises(ConfigError, match="hard_fraction 0 with objective graded_listwise"):
        from_mapping(TrainConfig, {"train": ["x.jsonl"], "objective": "graded_listwise", "hard_fraction": 0})
