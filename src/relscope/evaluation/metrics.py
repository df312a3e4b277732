"""Measures are values and a library computes them: ir_measures, never hand-written metrics."""

from __future__ import annotations

from collections.abc import Sequence

import ir_measures

from relscope.config import DEFAULT_MEASURES
from relscope.data.types import Qrels, Run, run_scores
from relscope.errors import ConfigError


def parse_measures(names: Sequence[str]) -> list:
    measures = []
    for name in names:
        try:
            measures.append(ir_measures.parse_measure(name))
        except (ValueError, NameError, SyntaxError, TypeError, AttributeError):
            raise ConfigError(
                f"measure {name!r} is not an ir_measures measure; examples: nDCG@10, RR(rel=2)@10, AP(rel=2), P@5"
            ) from None
    return measures


def evaluate_run(
    qrels: Qrels, run: Run, measures: Sequence[str] = DEFAULT_MEASURES
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean over judged queries, per query) for each measure, keyed by its string form.

    Queries without judgments are left out, as trec_eval does; a judged query the run lacks
    is left out too (trec_eval without -c).
    """
    parsed = parse_measures(measures)
    judged = {q: docs for q, docs in run_scores(run).items() if q in qrels}
    qrels = {q: qrels[q] for q in judged}  # ir_measures would average a judged query the run lacks in as 0
    per_query: dict[str, dict[str, float]] = {}
    for metric in ir_measures.iter_calc(parsed, qrels, judged):
        per_query.setdefault(metric.query_id, {})[str(metric.measure)] = float(metric.value)
    aggregate = {str(m): float(v) for m, v in ir_measures.calc_aggregate(parsed, qrels, judged).items()}
    return {name: aggregate.get(str(m), float("nan")) for name, m in zip(measures, parsed)}, {
        q: {name: row.get(str(m), float("nan")) for name, m in zip(measures, parsed)} for q, row in per_query.items()
    }
