"""Regressions of `relscope patch` (issue 16): pairs dropped by pair and not by query id, layer labels that match the
layers patched, identical prompts skipped and counted, a run with no pair left refused, and settings checked where
they enter. Each runs the real command on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import tiny_loaded

from relscope.analysis.patching.engine import PatchingEngine
from relscope.analysis.patching.fast import FastPatcher
from relscope.analysis.patching.pairs import PatchPair, build_pairs
from relscope.analysis.patching.settings import PatchSettings
from relscope.analysis.patching.sites import Site
from relscope.cli import main
from relscope.data.groups import NegativePassage, TrainingGroup, read_groups, write_groups
from relscope.errors import ConfigError, RelscopeError
from relscope.models.heads import build_head
from relscope.prompts import PromptBuilder, get_template

TOPICS = [("what is the capital of france", "Paris is the capital and largest city of France."),
          ("why are bananas yellow", "Bananas are yellow because of carotenoids."),
          ("where do rivers flow", "Rivers flow to the sea.")]
NOISE = ["The quick brown fox jumps over the lazy dog.", "Mountains rise above the clouds.",
         "Numbers and punctuation 0123456789!", "Bananas ripen in tropical climates."]


def _groups(path: Path, qids: list[str], identical: int = 0) -> Path:
    """Groups with the given query ids (repeats share an id, as TREC-built groups do); the first `identical` have
    their positive as their only negative."""
    groups = []
    for i, qid in enumerate(qids):
        query, positive = TOPICS[i % 3]
        negatives = (positive,) if i < identical else tuple(NOISE[(i + j) % 4] for j in range(4))
        groups.append(TrainingGroup(qid, query, (positive,), tuple(NegativePassage(n, "hard", f"n{i}{j}")
                                                                   for j, n in enumerate(negatives))))
    write_groups(groups, path)
    return path


def _patch(model: Path, groups: Path, out: Path, *extra: str) -> list[str]:
    return ["patch", str(model), "--groups", str(groups), "--max-pairs", "0", "--components", "mlp", "--positions",
            "last", "all", "--out", str(out), "--quiet", *extra]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("relscope: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_pairs_below_the_gap_are_dropped_by_pair_not_by_query_id(tiny_family_dir, tmp_path, capsys):
    """Bug 1: pairs sharing a query id, only some below --min-gap: qids and ld_* stay aligned with the IE rows."""
    model = tiny_family_dir("llama")
    groups = _groups(tmp_path / "groups.jsonl", ["q1", "q1", "q1", "q2", "q2", "q3"])
    assert main(_patch(model, groups, tmp_path / "all", "--min-gap", "0")) == 0
    every = np.load(tmp_path / "all" / "ie.npz")
    qids, gaps = list(every["qids"]), np.abs(every["ld_clean"] - every["ld_corrupted"])
    assert len(qids) == 6
    # a threshold between two gaps of pairs of q1: q1 keeps some pairs and loses others
    q1 = sorted(gaps[i] for i, q in enumerate(qids) if q == "q1")
    threshold = (q1[0] + q1[1]) / 2
    kept = gaps >= threshold
    assert 0 < kept.sum() < 6
    assert main(_patch(model, groups, tmp_path / "some", "--min-gap", str(threshold), "--attribution", "atp",
                       "--validate")) == 0, capsys.readouterr().err
    some = np.load(tmp_path / "some" / "ie.npz")
    assert len(some["ie"]) == len(some["qids"]) == len(some["ld_clean"]) == len(some["ld_corrupted"]) == kept.sum()
    assert list(some["qids"]) == [q for q, k in zip(qids, kept) if k]
    np.testing.assert_array_equal(some["ld_clean"], every["ld_clean"][kept])
    np.testing.assert_array_equal(some["ie"], every["ie"][kept])
    assert np.load(tmp_path / "some" / "ie_atp.npz")["ie"].shape == some["ie"].shape
    manifest = json.loads((tmp_path / "some" / "manifest.json").read_text())
    assert sorted(manifest["excluded_small_gap"]) == sorted(q for q, k in zip(qids, kept) if not k)


def test_layer_labels_match_the_layers_patched_for_an_unsorted_list(tiny_family_dir, tmp_path):
    """Bug 2: `--layers 2 0` labels the grid with the layers in the order the sites were patched."""
    model, groups = tiny_family_dir("llama"), _groups(tmp_path / "groups.jsonl", ["q1", "q2"])
    runs = {}
    for name, layers in (("unsorted", ["2", "0"]), ("sorted", ["0", "2"])):
        assert main(_patch(model, groups, tmp_path / name, "--min-gap", "0", "--heads", "--layers", *layers)) == 0
        runs[name] = {what: np.load(tmp_path / name / f"{what}.npz") for what in ("ie", "ie_heads")}
    for what, axis in (("ie", 2), ("ie_heads", 2)):
        by_label = {name: {int(layer): np.take(saved[what]["ie"], j, axis=axis)
                           for j, layer in enumerate(saved[what]["layers"])} for name, saved in runs.items()}
        assert sorted(by_label["unsorted"]) == [0, 2]
        for layer in (0, 2):
            np.testing.assert_array_equal(by_label["unsorted"][layer], by_label["sorted"][layer])


def test_layers_beyond_the_model_fail_before_the_sweep(tiny_family_dir, tmp_path, capsys):
    """Bug 2: an out-of-range layer is one error naming --layers and the valid range, with nothing computed."""
    groups = _groups(tmp_path / "groups.jsonl", ["q1", "q2"])
    code = main(_patch(tiny_family_dir("llama"), groups, tmp_path / "out", "--layers", "1", "5"))
    line = _error_line(capsys)
    assert code == 2 and "--layers" in line and "0 to 2" in line
    assert not (tmp_path / "out" / "pairs").exists() and not (tmp_path / "out" / "ie.npz").exists()


def test_identical_clean_and_corrupted_prompts_are_skipped_and_counted(tiny_family_dir, tmp_path, capsys):
    """Bug 11: a group whose negative is its positive gives no pair (it has no differing token), and is counted."""
    groups = _groups(tmp_path / "groups.jsonl", ["q1", "q2", "q3", "q4"], identical=2)
    assert main(_patch(tiny_family_dir("llama"), groups, tmp_path / "out", "--min-gap", "0")) == 0, \
        capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["skipped_identical"] == 2 and manifest["pairs"] == 2
    assert sorted(np.load(tmp_path / "out" / "ie.npz")["qids"]) == ["q3", "q4"]


def test_the_fast_path_patches_an_identical_pair_to_no_change():
    """Bug 11: the fast path on prompts with no differing token returns the corrupted run, not StopIteration."""
    loaded = tiny_loaded("llama")
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no"), 128)
    engine = PatchingEngine(loaded.model, loaded.spec, build_head("yes_no", loaded.model, builder))
    prompt = builder.build(TOPICS[0][0], [TOPICS[0][1]])
    result = FastPatcher(engine).sweep(PatchPair("q", prompt, prompt), [Site("mlp", 1, "all"), Site("attn", 0, "last")])
    assert result.gap == 0 and result.patched.tolist() == [result.corrupted] * 2


def test_all_identical_pairs_are_one_error(tiny_family_dir, tmp_path, capsys):
    """Bug 11 / no pair: every group identical is one error line naming why, exit 2, nothing written."""
    groups = _groups(tmp_path / "groups.jsonl", ["q1", "q2"], identical=2)
    code = main(_patch(tiny_family_dir("llama"), groups, tmp_path / "out"))
    line = _error_line(capsys)
    assert code == 2 and "identical" in line
    assert not (tmp_path / "out" / "ie.npz").exists()


def test_a_run_where_no_pair_passes_the_gap_is_refused_before_writing(tiny_family_dir, tmp_path, capsys):
    """No pair survives --min-gap: exit 2 with one line naming --min-gap, and no zero-row ie.npz or pair cache."""
    groups = _groups(tmp_path / "groups.jsonl", ["q1", "q1", "q2"])
    code = main(_patch(tiny_family_dir("llama"), groups, tmp_path / "out", "--min-gap", "1e9"))
    line = _error_line(capsys)
    assert code == 2 and "--min-gap" in line and "3 pairs" in line
    assert not (tmp_path / "out" / "ie.npz").exists() and not (tmp_path / "out" / "pairs").exists()


def test_pairs_are_built_without_identical_prompts(tiny_groups):
    """Bug 11: build_pairs counts a group whose only negative equals its positive instead of pairing it."""
    loaded = tiny_loaded("llama")
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no"), 128)
    group = read_groups(tiny_groups)[2]  # one that lines up
    same = TrainingGroup("same", group.query, group.positives, (NegativePassage(group.positives[0], "hard"),))
    pairs, report = build_pairs([same, group], builder)
    assert [p.qid for p in pairs] == [group.qid] and report.skipped_identical == 1


BAD_SETTINGS = [
    ({"max_pairs": 0}, "--max-pairs"), ({"max_pairs": -3}, "--max-pairs"), ({"max_pairs": 2.5}, "--max-pairs"),
    ({"min_gap": float("nan")}, "--min-gap"), ({"min_gap": float("inf")}, "--min-gap"),
    ({"min_gap": -0.1}, "--min-gap"), ({"batch_size": 0}, "--batch-size"), ({"max_length": 0}, "--max-length"),
    ({"layers": [-1]}, "--layers"), ({"layers": []}, "--layers"), ({"layers": [1.5]}, "--layers"),
    ({"components": ["mlp", "nope"]}, "--components"), ({"components": []}, "--components"),
    ({"positions": ["middle"]}, "--positions"), ({"head_positions": ["x"]}, "--head-positions"),
    ({"negative_kind": "soft"}, "--negatives"), ({"perturbation": "swap"}, "--perturbation"),
    ({"top": 0}, "top"), ({"dtype": "float8"}, "--dtype"), ({"max_pairs": True}, "--max-pairs"),
]


@pytest.mark.parametrize(("changes", "key"), BAD_SETTINGS, ids=[str(c) for c, _ in BAD_SETTINGS])
def test_patch_settings_refuse_out_of_range_values_naming_the_option(changes, key):
    """PatchSettings checks its own ranges: a ConfigError (exit 2 in the CLI) naming the option."""
    with pytest.raises(ConfigError, match=key):
        PatchSettings(**changes)


def test_patch_settings_sort_and_dedupe_layers():
    """Bug 2: layers are normalised once (sorted, each once), so labels and sites agree everywhere."""
    assert PatchSettings(layers=[5, 2, 5]).layers == (2, 5)


def test_max_pairs_0_means_every_pair_on_the_command_line_only():
    """--max-pairs 0 is the command line's "all" (None in the settings); the API and a study config refuse 0."""
    from relscope.analysis.patching.settings import HeadsSettings
    from relscope.cli import build_parser
    from relscope.cli.flags import settings_from

    for command, cls in (("patch", PatchSettings), ("heads", HeadsSettings)):
        args = build_parser().parse_args([command, "model", "--max-pairs", "0", "--out", "x"])
        assert settings_from(cls, args, command).max_pairs is None
        with pytest.raises(ConfigError, match="--max-pairs"):
            cls(max_pairs=0)


@pytest.mark.parametrize("extra", [["--max-pairs", "-1"], ["--min-gap", "nan"], ["--min-gap", "-1"],
                                   ["--batch-size", "0"], ["--layers", "-2"]])
def test_the_patch_command_refuses_bad_numbers_in_one_line(extra, tiny_family_dir, tmp_path, capsys):
    """Out-of-range numeric options of patch: exit 2, one error line naming the option, nothing written."""
    groups = _groups(tmp_path / "groups.jsonl", ["q1"])
    code = main(_patch(tiny_family_dir("llama"), groups, tmp_path / "out", *extra))
    assert code == 2 and extra[0] in _error_line(capsys)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.npz"))


def test_knockout_and_compare_refuse_bad_numbers(tmp_path):
    """knockout's --size/--random-draws/--max-groups and compare's --top/--depth-bins/--p are range-checked."""
    from relscope.analysis.compare import compare_job
    from relscope.analysis.knockout import knockout_job
    from relscope.analysis.patching.settings import KnockoutSettings
    from relscope.analysis.settings import CompareSettings

    for kwargs, key in (({"size": 0}, "--size"), ({"size": -2}, "--size"), ({"random_draws": -1}, "--random-draws"),
                        ({"max_groups": 0}, "--max-groups")):
        with pytest.raises(RelscopeError, match=key):
            knockout_job(KnockoutSettings(ie_heads=str(tmp_path / "none.npz"), **kwargs), tmp_path / "k")
    for kwargs, key in (({"top": 0}, "--top"), ({"depth_bins": 0}, "--depth-bins"),
                        ({"depth_bins": -1}, "--depth-bins"), ({"p": float("nan")}, "--p"), ({"p": 1.0}, "--p")):
        with pytest.raises(RelscopeError, match=key):
            compare_job(CompareSettings(run_a=str(tmp_path), run_b=str(tmp_path), **kwargs), tmp_path / "c")
    assert not (tmp_path / "k").exists() and not (tmp_path / "c").exists()


def test_query_ids_that_are_no_file_names_are_cached_safely(tiny_family_dir, tmp_path, capsys):
    """A query id with '/', '..' or 300 characters names no file outside pairs/ and no name too long to write."""
    odd = ["../../escape", "a/b", "x" * 300]
    groups = _groups(tmp_path / "groups.jsonl", odd)
    out = tmp_path / "out"
    assert main(_patch(tiny_family_dir("llama"), groups, out, "--min-gap", "0")) == 0, capsys.readouterr().err
    entries = [p for p in out.rglob("*") if p.is_file() and p.suffix == ".npz" and p.parent.name == "pairs"]
    assert len(entries) == 3 and all(len(p.name) < 100 for p in entries)
    assert sorted(np.load(out / "ie.npz")["qids"]) == sorted(odd)
    assert not (tmp_path / "escape").exists() and not any(tmp_path.glob("*escape*"))


NUMERIC = ("max_pairs", "min_gap", "batch_size", "top", "max_length", "layers")


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(NUMERIC + ("components", "positions", "negative_kind", "dtype", "heads", "template")),
       value=st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), st.text(max_size=6),
                       st.lists(st.integers(-3, 10**6), max_size=4), st.lists(st.text(max_size=4), max_size=3)))
def test_any_value_of_a_patch_setting_is_in_range_or_one_config_error(key, value):
    """Property: a PatchSettings value is accepted only in range; anything else is one short ConfigError line."""
    try:
        built = PatchSettings(**{key: value})
    except ConfigError as err:
        assert "\n" not in str(err) and len(str(err)) < 300 and key.split("_")[0] in str(err)
        return
    got = getattr(built, key)
    if key == "layers" and got is not None:
        assert list(got) == sorted(set(got)) and all(isinstance(x, int) and x >= 0 for x in got)
    elif key == "min_gap":
        assert np.isfinite(got) and got >= 0
    elif key in NUMERIC and got is not None:
        assert isinstance(got, int) and not isinstance(got, bool) and got >= 1


@pytest.mark.parametrize("extra", [["--positions", "query"], ["--positions", "last", "--layers", "1"]],
                         ids=["no effect anywhere", "one component"])
def test_compare_refuses_runs_with_nothing_to_rank(extra, tiny_family_dir, tmp_path, capsys):
    """A patch run whose components all have the same IE (or only one component): compare is one error, exit 2."""
    groups = _groups(tmp_path / "groups.jsonl", ["q1", "q2"])
    run = tmp_path / "run"
    # query-first: the query precedes every token that differs, so nothing there has an effect (last --positions wins)
    assert main(_patch(tiny_family_dir("llama"), groups, run, "--min-gap", "0", "--layout",
                       "query-document-instruction", *extra)) == 0
    code = main(["compare", str(run), str(run), "--out", str(tmp_path / "cmp")])
    assert code == 2 and "ie.npz" in _error_line(capsys)
    assert not (tmp_path / "cmp" / "summary.md").exists()
