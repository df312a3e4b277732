"""Every numeric option of every command, given a value out of its range, is refused in one line (exit 2) before any
work, and nothing is written. Values are drawn by hypothesis: any negative (or zero where zero means nothing), and
non-finite floats."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from cli_env import env, files_under, run_cli, trained  # noqa: F401 - env, trained: fixtures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@dataclass(frozen=True)
class Option:
    command: Callable  # env -> argv without the option
    flag: str
    bad: st.SearchStrategy  # values out of range

    @property
    def name(self) -> str:
        return f"{self.command.__name__.strip('_')} {self.flag}"


def below(minimum: int) -> st.SearchStrategy:
    return st.integers(max_value=minimum - 1, min_value=-(10**9))


def outside_unit(low_open: bool = False) -> st.SearchStrategy:
    return st.one_of(NON_FINITE, st.floats(max_value=0.0 if low_open else -1e-9, allow_nan=False,
                                           allow_infinity=False, min_value=-1e9),
                     st.floats(min_value=1.0 + 1e-9, max_value=1e9))


def negative_or_non_finite() -> st.SearchStrategy:
    return st.one_of(NON_FINITE, st.floats(max_value=-1e-9, min_value=-1e9))


def _rerank(env):
    return ["rerank", "--model", str(env.model), "--data", str(env.trec), "--out", str(env.out), "--quiet"]


def _checkpoints(env):
    return ["lora", "checkpoints", str(env.checkpoint.parent), "--data", str(env.trec), "--out", str(env.out)]


def _ablate(env):
    return ["lora", "ablate", str(env.checkpoint), "--data", str(env.trec), "--out", str(env.out)]


def _patch(env):
    return ["patch", str(env.model), "--groups", str(env.groups), "--out", str(env.out), "--quiet"]


def _heads(env):
    return ["heads", str(env.model), "--groups", str(env.groups), "--out", str(env.out), "--quiet"]


def _knockout(env):
    path = env.tmp / "ie_heads.npz"
    if not path.exists():
        np.savez(path, ie=np.zeros((1, 3, 4, 1)), groups=np.array(["last"]), layers=np.array([0, 1, 2]))
    return ["knockout", str(env.model), "--ie-heads", str(path), "--groups", str(env.groups), "--data",
            str(env.trec), "--out", str(env.out)]


def _compare(env):
    return ["compare", str(env.tmp), str(env.tmp), "--out", str(env.out)]


def _groups(env):
    return ["groups", "--data", str(env.trec), "--out", str(env.out / "groups.jsonl")]


def _fuse(env):
    run = str(env.trec / "run.bm25.txt")
    return ["fuse", "--run", run, "--run", run, "--out", str(env.out / "fused.trec"), "--weights", "0.5"]


def _probe(env):
    return ["probe", str(env.model), "--groups", str(env.groups), "--out", str(env.out)]


def _attention(env):
    return ["attention", str(env.model), "--groups", str(env.groups), "--out", str(env.out)]


def _dynamics(env):
    return ["dynamics", str(env.checkpoint.parent), "--out", str(env.out)]


OPTIONS = [
    Option(_rerank, "--top-k", below(1)),
    Option(_rerank, "--max-queries", below(1)),
    Option(_rerank, "--max-length", below(8)),
    Option(_rerank, "--max-batch-tokens", below(0)),
    Option(_checkpoints, "--top-k", below(1)),
    Option(_checkpoints, "--max-queries", below(1)),
    Option(_checkpoints, "--epsilon", negative_or_non_finite()),
    Option(_ablate, "--top-k", below(1)),
    Option(_ablate, "--max-queries", below(1)),
    Option(_patch, "--max-pairs", below(0)),
    Option(_patch, "--min-gap", negative_or_non_finite()),
    Option(_patch, "--max-length", below(1)),
    Option(_patch, "--batch-size", below(1)),
    Option(_patch, "--layers", below(0)),
    Option(_heads, "--max-pairs", below(0)),
    Option(_heads, "--max-length", below(1)),
    Option(_heads, "--marked", below(0)),
    Option(_knockout, "--size", below(1)),
    Option(_knockout, "--max-groups", below(1)),
    Option(_knockout, "--random-draws", below(0)),
    Option(_knockout, "--top-k", below(1)),
    Option(_knockout, "--max-queries", below(1)),
    Option(_knockout, "--max-length", below(1)),
    Option(_compare, "--top", below(1)),
    Option(_compare, "--depth-bins", below(1)),
    Option(_compare, "--p", outside_unit(low_open=True)),
    Option(_groups, "--negatives", st.one_of(below(1), st.integers(1001, 10**12))),
    Option(_groups, "--hard-fraction", outside_unit()),
    Option(_fuse, "--weights", NON_FINITE),
    Option(_probe, "--max-groups", below(1)),
    Option(_probe, "--folds", below(2)),
    Option(_probe, "--max-length", below(1)),
    Option(_attention, "--max-groups", below(1)),
    Option(_attention, "--max-length", below(1)),
    Option(_dynamics, "--window", below(1)),
    Option(_dynamics, "--after", below(0)),
]


@pytest.mark.parametrize("option", OPTIONS, ids=[o.name for o in OPTIONS])
def test_an_out_of_range_option_is_one_line_before_any_work(option, env, capsys):
    @SETTINGS
    @given(value=option.bad)
    def check(value) -> None:
        argv = [*option.command(env), f"{option.flag}={value}"]  # '=': argparse reads '-inf' alone as a flag
        code, errors, err = run_cli(argv, capsys)
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, f"{argv}: exit {code}; {err}"
        assert option.flag.lstrip("-").replace("-", "_") in errors[0] or option.flag in errors[0], errors[0]
        assert files_under(env.out) == [], f"{argv} wrote files"

    check()
