"""Hostile inputs to evaluation: ir_measures strings that abort or hang pytrec_eval, measures over no common query,
fusion weights and norms, degenerate fused runs, and `fuse`/`groups` outputs that would land on a folder or on
their own inputs. Each is refused in one line (exit 2) before anything is written."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_env import files_under, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relscope.evaluation.settings import RerankConfig
from relscope.errors import ConfigError
from relscope.evaluation.metrics import parse_measures

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Each of these aborted the interpreter inside pytrec_eval (SIGABRT), hung it, or raised a traceback.
HOSTILE_MEASURES = [
    "P@0", "nDCG@0", "AP@0", "R@0", "Success@0", "nDCG(cutoff=0)", "AP(rel=2,cutoff=0)",  # SIGABRT
    "nDCG(gains={1:2147483648})@10",  # allocates per gain level: hangs
    "RR(rel=x)", "RR(rel=0)", "RR(rel=2.5)", "AP(rel=2147483648)", "P(rel=True)@5", "P@1e400", "P@2.5",
    "P@99999999999999999999", "IPrec@2", "Judged@0", "ERR@0", "SDCG@10", "NumRel(rel=2)", "alpha_nDCG@10",
    "nDCG(dcg='foo')@10", "P(foo=1)@5", "P@True", "", "P@10)", "nDCG@10 AND", "x" * 5000, "nDCG@10\nP@5",
]


def test_hostile_measure_strings_are_one_line_in_every_command(trec_dir, tmp_path):
    """In a child process: an abort there fails this test instead of killing the test session."""
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from relscope.cli import main
        trec, out = {str(trec_dir)!r}, {str(tmp_path / "out")!r}
        results = []
        for measure in json.loads(sys.argv[1]):
            for command in (["evaluate", "--qrels", trec + "/qrels.txt", "--run", trec + "/run.bm25.txt"],
                            ["fuse", "--run", trec + "/run.bm25.txt", "--run", trec + "/run.bm25.txt",
                             "--weights", "1", "1", "--qrels", trec + "/qrels.txt", "--out", out + "/f.trec"],
                            ["rerank", "--model", "/nowhere/model", "--data", trec, "--out", out]):
                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = main([*command, "--measures", measure])
                results.append([measure[:20], command[0], code, err.getvalue()])
        print(json.dumps(results))
    """)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(HOSTILE_MEASURES)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for measure, command, code, err in json.loads(done.stdout):
        assert code == 2 and len(err.strip().splitlines()) == 1, (measure, command, err)
        assert "measure" in err and "Traceback" not in err and len(err) < 400, (measure, command, err)
    assert files_under(tmp_path / "out") == []


@SETTINGS
@given(cutoff=st.integers(min_value=-(10**30), max_value=10**30), rel=st.integers(min_value=-(10**12),
                                                                                 max_value=10**12))
def test_any_cutoff_and_rel_is_computed_or_refused(cutoff, rel):
    for name in (f"P@{cutoff}", f"nDCG(cutoff={cutoff})", f"AP(rel={rel})", f"RR(rel={rel})@{cutoff}",
                 f"R@{cutoff}", f"Success(rel={rel})@{cutoff}"):
        try:
            parse_measures([name])
        except ConfigError as err:
            assert "\n" not in str(err) and name[:10] in str(err)


def test_a_rerank_config_refuses_a_bad_measure_where_it_is_set():
    with pytest.raises(ConfigError, match="cutoff"):
        RerankConfig(measures=("nDCG@10", "P@0"))
    with pytest.raises(ConfigError, match="at least one"):
        RerankConfig(measures=())


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_measures_over_no_common_query_name_both_files(trec_dir, tmp_path, capsys):
    qrels = _write(tmp_path / "other.qrels", "77 0 p1 2\n78 0 p2 1\n")
    run = trec_dir / "run.bm25.txt"
    code, errors, err = run_cli(["evaluate", "--qrels", str(qrels), "--run", str(run)], capsys)
    assert code == 2 and len(errors) == 1 and str(qrels) in errors[0] and str(run) in errors[0]
    out = tmp_path / "fused.trec"
    code, errors, _ = run_cli(["fuse", "--run", str(run), "--run", str(run), "--weights", "1", "1", "--qrels",
                               str(qrels), "--out", str(out)], capsys)
    assert code == 2 and str(qrels) in errors[0] and not out.exists()


def test_a_huge_grade_is_refused_not_allocated(trec_dir, tmp_path, capsys):
    qrels = _write(tmp_path / "huge.qrels", "1 0 p1 2147483647\n2 0 p2 1\n")
    code, errors, _ = run_cli(["evaluate", "--qrels", str(qrels), "--run", str(trec_dir / "run.bm25.txt")], capsys)
    assert code == 2 and len(errors) == 1 and "2147483647" in errors[0]


def test_rerank_refuses_a_query_subset_without_judgments_before_loading_the_model(trec_dir, tmp_path, capsys):
    qrels = _write(tmp_path / "q2.qrels", "2 0 p2 2\n")  # the run's first query (1) is not judged
    out = tmp_path / "out"
    code, errors, _ = run_cli(["rerank", "--model", "/nowhere/model", "--data", str(trec_dir), "--qrels", str(qrels),
                               "--max-queries", "1", "--out", str(out), "--quiet"], capsys)
    assert code == 2 and len(errors) == 1 and "share no query" in errors[0] and "model" not in errors[0]
    assert files_under(out) == []


@pytest.fixture
def runs(tmp_path) -> tuple[Path, Path, Path]:
    a = _write(tmp_path / "a.trec", "1 Q0 p1 1 3.0 a\n1 Q0 p2 2 2.0 a\n2 Q0 p3 1 1.0 a\n")
    b = _write(tmp_path / "b.trec", "1 Q0 p2 1 9.0 b\n1 Q0 p1 2 1.0 b\n2 Q0 p3 1 5.0 b\n")
    qrels = _write(tmp_path / "qrels", "1 0 p1 2\n2 0 p3 1\n")
    return a, b, qrels


@pytest.mark.parametrize("extra,words", [
    (["--weights", "nan", "1"], "weights"),
    (["--weights", "inf", "1"], "weights"),
    (["--weights", "-1", "1"], "weights"),
    (["--weights", "0", "0"], "all 0"),
    (["--weights", "1"], "one weight each"),
    (["--weights", "1", "1", "1"], "one weight each"),
    (["--weights", "1", "1", "--norm", "softmax"], "norm"),
])
def test_bad_fusion_options_are_refused_before_anything_is_written(runs, tmp_path, capsys, extra, words):
    a, b, qrels = runs
    out = tmp_path / "out" / "fused.trec"
    code, errors, err = run_cli(["fuse", "--run", str(a), "--run", str(b), "--qrels", str(qrels), "--out", str(out),
                                 *extra], capsys)
    assert code == 2 and len(errors) == 1 and words in errors[0] and "Traceback" not in err, err
    assert files_under(tmp_path / "out") == []


def test_weights_whose_fused_scores_overflow_are_refused(runs, tmp_path, capsys):
    a, _, _ = runs
    out = tmp_path / "fused.trec"
    code, errors, _ = run_cli(["fuse", "--run", str(a), "--run", str(a), "--weights", "1e308", "1e308",
                               "--out", str(out)], capsys)
    assert code == 2 and len(errors) == 1 and "overflow" in errors[0] and not out.exists()


@pytest.mark.parametrize("target", ["folder", "first run", "second run", "qrels"])
def test_fuse_refuses_to_write_over_a_folder_or_its_own_inputs(runs, tmp_path, capsys, target):
    a, b, qrels = runs
    (tmp_path / "folder").mkdir()
    out = {"folder": tmp_path / "folder", "first run": a, "second run": b, "qrels": qrels}[target]
    before = {p: p.read_bytes() for p in (a, b, qrels)}
    code, errors, _ = run_cli(["fuse", "--run", str(a), "--run", str(b), "--weights", "1", "1", "--qrels", str(qrels),
                               "--out", str(out)], capsys)
    assert code == 2 and len(errors) == 1 and str(out) in errors[0]
    assert {p: p.read_bytes() for p in (a, b, qrels)} == before
    assert files_under(tmp_path / "folder") == []


def test_an_empty_fused_run_is_an_error_not_an_empty_file(runs, tmp_path, capsys):
    a, _, _ = runs
    disjoint = _write(tmp_path / "c.trec", "1 Q0 x1 1 3.0 c\n2 Q0 x2 1 1.0 c\n")
    out = tmp_path / "fused.trec"
    code, errors, _ = run_cli(["fuse", "--run", str(a), "--run", str(disjoint), "--weights", "1", "1",
                               "--out", str(out)], capsys)
    assert code == 2 and len(errors) == 1 and "empty" in errors[0] and not out.exists()


@SETTINGS
@given(weights=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=3))
def test_any_weights_fuse_to_finite_scores_or_are_refused(runs, tmp_path_factory, capsys, weights):
    a, b, _ = runs
    out = tmp_path_factory.mktemp("fuse") / "fused.trec"
    try:
        code, errors, err = run_cli(["fuse", "--run", str(a), "--run", str(b), "--out", str(out), "--weights",
                                     *map(repr, weights)], capsys)
    except SystemExit as exit:  # argparse reads "-1e+16" or "-inf" as an option, and says so
        code, err = exit.code, capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
    if code == 0:
        scores = [float(line.split()[4]) for line in out.read_text().splitlines()]
        assert scores and all(math.isfinite(s) for s in scores)
    else:
        assert code == 2 and len(errors) == 1 and "Traceback" not in err and not out.exists(), err


@pytest.mark.parametrize("extra,words", [
    (["--negatives", "0"], "--negatives"),
    (["--negatives", "-3"], "--negatives"),
    (["--negatives", "1000000"], "--negatives"),
    (["--hard-fraction", "nan"], "--hard-fraction"),
    (["--hard-fraction", "-0.1"], "--hard-fraction"),
    (["--hard-fraction", "1.5"], "--hard-fraction"),
    (["--min-grade", "0"], "--min-grade"),
    (["--min-grade", "-2"], "--min-grade"),
])
def test_group_options_are_range_checked_before_any_file_is_read(tmp_path, capsys, extra, words):
    out = tmp_path / "out" / "groups.jsonl"
    code, errors, _ = run_cli(["groups", "--data", str(tmp_path / "nowhere"), "--out", str(out), *extra], capsys)
    assert code == 2 and len(errors) == 1 and words in errors[0]  # not the missing folder: options come first
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("target", ["folder", "qrels.txt", "queries.tsv", "run.bm25.txt"])
def test_groups_refuse_to_write_over_a_folder_or_their_own_inputs(trec_dir, tmp_path, capsys, target):
    out = trec_dir if target == "folder" else trec_dir / target
    before = {p: p.read_bytes() for p in trec_dir.iterdir()}
    code, errors, _ = run_cli(["groups", "--data", str(trec_dir), "--out", str(out)], capsys)
    assert code == 2 and len(errors) == 1 and str(out) in errors[0]
    assert {p: p.read_bytes() for p in trec_dir.iterdir()} == before
