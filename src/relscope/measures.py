"""ir_measures strings, checked where they enter (a config, --measures) before any work.

Some strings do not fail politely inside ir_measures: pytrec_eval aborts the whole interpreter (SIGABRT, no
exception) on a cutoff of 0 (`P@0`, `nDCG@0`, `AP(cutoff=0)`, `R@0`, `Success@0`), and it allocates memory in
proportion to the largest relevance grade or gain (`nDCG(gains={1:2147483648})@10` hangs). Others fail only once
computed (a provider that is not installed, `RR(rel=2.5)`, `IPrec@2`, `Judged@0`). So each measure is parsed,
its parameters are range-checked (which rules out the crashes), and it is then computed once on a tiny judged run;
any failure becomes one ConfigError naming the measure and the fix. Importable without torch; ir_measures is
imported on first use.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from relscope.errors import ConfigError, short

if TYPE_CHECKING:
    from ir_measures import Measure

# nDCG@10, MRR@10 and MAP with NIST's "relevant" threshold of grade 2 (as the TREC DL overviews).
DEFAULT_MEASURES = ("nDCG@10", "RR(rel=2)@10", "AP(rel=2)")

MAX_CUTOFF = 1_000_000  # ranks; far deeper than any run, far below where pytrec_eval's integers overflow
MAX_GRADE = 1_000  # relevance grades and gains: pytrec_eval allocates one slot per level up to the largest
EXAMPLES = "e.g. nDCG@10, RR(rel=2)@10, AP(rel=2), P@5"
# numeric query ids: gdeval (ERR, nDCG(dcg='exp-log2')) rejects others
_TRIAL_QRELS = {"1": {"d1": 3, "d2": 2, "d3": 1, "d4": 0}, "2": {"d5": 1, "d6": 0}}
_TRIAL_RUN = {"1": {"d1": 5.0, "d7": 4.0, "d2": 3.0, "d4": 2.0, "d3": 1.0}, "2": {"d6": 2.0, "d5": 1.0}}
_UNSET = re.compile(r"<object object at 0x[0-9a-f]+>")


def check_measures(names: Any, source: str = "measures") -> tuple[str, ...]:
    """The measure strings, each parsed, range-checked and computed once; a ConfigError names the first bad one."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError(f"{source}: expected a list of ir_measures strings ({EXAMPLES}), got {short(names)}")
    if not names:
        raise ConfigError(f"{source}: no measures; give at least one ({EXAMPLES})")
    for name in names:
        parse_measure(name, source)
    return tuple(names)


def parse_measure(name: Any, source: str = "measures") -> Measure:
    """The ir_measures measure for `name`, or a ConfigError saying why it cannot be used."""
    if not isinstance(name, str):
        raise ConfigError(f"{source}: measure {short(name)} is not a string; give ir_measures strings ({EXAMPLES})")
    return _checked(name, source)


@lru_cache(maxsize=512)  # a measure is tried once per process, however many configs name it
def _checked(name: str, source: str) -> Measure:
    import ir_measures

    shown = short(name)
    try:
        measure = ir_measures.parse_measure(name)
    except Exception:  # noqa: BLE001  (ir_measures raises ValueError, NameError, SyntaxError, ...)
        raise ConfigError(f"{source}: measure {shown} is not an ir_measures measure; {EXAMPLES}") from None
    for key, value in measure.params.items():
        _check_param(key, value, f"{source}: measure {shown}")
    try:
        ir_measures.calc_aggregate([measure], _TRIAL_QRELS, _TRIAL_RUN)
    except Exception as err:  # noqa: BLE001  (any provider's failure, e.g. not installed or a bad parameter)
        detail = _UNSET.sub("(not given)", " ".join(f"{type(err).__name__}: {err}".split()))[:200]
        raise ConfigError(f"{source}: measure {shown} cannot be computed ({detail}); {EXAMPLES}") from None
    return measure


def _check_param(key: str, value: Any, where: str) -> None:
    if key == "cutoff":
        _whole(value, 1, MAX_CUTOFF, f"{where}: the cutoff is a number of ranks", "nDCG@10")
    elif key == "rel":
        _whole(value, 1, MAX_GRADE, f"{where}: rel is the lowest grade counted relevant", "RR(rel=2)@10")
    elif key in ("min_rel", "max_rel"):
        _whole(value, 0, MAX_GRADE, f"{where}: {key} is a grade", "SDCG(max_rel=3)@10")
    elif key == "gains":
        for gain in value.values():
            if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0 <= gain <= MAX_GRADE:
                raise ConfigError(f"{where}: each gain must be a number from 0 to {MAX_GRADE}, got {gain!r}; "
                                  "e.g. nDCG(gains={0:0,1:1,2:3,3:7})@10")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")


def _whole(value: Any, low: int, high: int, what: str, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what}: a whole number from {low} to {high}, got {value!r}; e.g. {example}")

