"""Training groups from real judgments: one positive and all of its query's negatives, seeded and reproducible.

Positives are judged passages with grade >= min_grade, one group each (so every positive is
trained on in every epoch). Hard negatives come from a first-stage run's top `hard_depth`
(judged 0 or unjudged); without a run, from the judged-0 passages (pooled from many systems,
so they are hard too). A group keeps every one of them, as Tevatron's groups
do, in a seeded order: training draws `negatives` of them anew in each epoch (relscope.training.data). Random
negatives from the collection are added only where a draw needs them (hard_fraction < 1, or
too few hard ones): as many as the hard ones, and at least that share of a draw.
Pairs whose passage has no text are skipped and counted, never silently dropped.

Graded groups (`graded=True`) keep each passage's judged grade: a positive of grade g also takes the query's judged
passages of grades 1 to g - 1 as (partly relevant) negatives, so that a graded objective learns 3 over 2 over 1 over 0,
as nDCG rewards, not only relevant over not.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from relscope.config import option
from relscope.data.dataset import data_path
from relscope.data.groups import NegativePassage, TrainingGroup, read_groups
from relscope.data.lines import is_input_file, require_file
from relscope.data.msmarco import read_texts
from relscope.data.trec import read_qrels, read_run
from relscope.data.types import Qrels, Run, natural_key
from relscope.errors import ConfigError, DataError
from relscope.measures import MAX_GRADE

log = logging.getLogger(__name__)


@dataclass
class GroupReport:
    queries: int = 0
    queries_without_positive: int = 0
    groups: int = 0
    hard_negatives: int = 0  # not relevant (judged 0 or unjudged), from the run or the judged-0 passages
    graded_negatives: int = 0  # graded groups: lower-graded judged passages (grade 1 .. positive's - 1)
    random_negatives: int = 0
    skipped_missing_text: int = 0  # judged pairs whose passage has no text


def build_groups(
    queries: dict[str, str],
    qrels: Qrels,
    passages: dict[str, str],
    run: Run | None = None,
    negatives: int = 7,
    hard_fraction: float = 1.0,
    min_grade: int = 2,
    hard_depth: int = 100,
    seed: int = 0,
    graded: bool = False,
) -> tuple[list[TrainingGroup], GroupReport]:
    """One group per positive passage: every hard negative first, then random ones where a draw of `negatives`
    with `hard_fraction` of them hard needs them; graded, the query's lower-graded judged passages count as hard
    negatives too, each with its grade."""
    if negatives < 1 or not 0.0 <= hard_fraction <= 1.0:
        raise DataError(f"need negatives >= 1 and 0 <= hard_fraction <= 1, got {negatives}, {hard_fraction}")
    report = GroupReport()
    pool = sorted(passages)
    groups: list[TrainingGroup] = []
    for qid in sorted(qrels, key=natural_key):
        if qid not in queries:
            raise DataError(f"query {qid} is judged in the qrels but absent from the queries file; use matching files")
        report.queries += 1
        judged = qrels[qid]
        report.skipped_missing_text += sum(pid not in passages for pid in judged)
        positives = sorted((p for p, g in judged.items() if g >= min_grade and p in passages), key=natural_key)
        if not positives:
            report.queries_without_positive += 1
            continue
        hard_pool = _hard_pool(qid, judged, passages, run, hard_depth)
        for pid in positives:
            rng = random.Random(f"{seed}:{qid}:{pid}")  # str seeds are stable across runs and processes
            lower = _lower_graded(judged, passages, judged[pid]) if graded else []
            chosen = _negatives(rng, hard_pool + lower, pool, judged, negatives, hard_fraction)
            grades = (judged[pid],) if graded else ()
            report.graded_negatives += sum(judged.get(n.pid, 0) > 0 for n in chosen)
            report.hard_negatives += sum(n.kind == "hard" and judged.get(n.pid, 0) == 0 for n in chosen)
            report.random_negatives += sum(n.kind == "random" for n in chosen)
            groups.append(TrainingGroup(
                qid, queries[qid], (passages[pid],),
                tuple(NegativePassage(passages[n.pid], n.kind, n.pid, judged.get(n.pid, 0) if graded else 0)
                      for n in chosen), grades))
    report.groups = len(groups)
    if not groups:
        raise DataError(f"no training groups: no judged passage with text has grade >= {min_grade}; "
                        "check the qrels/collection pair or lower min_grade")
    return groups, report


def groups_from_trec_folder(folder: Path, negatives: int = 7, hard_fraction: float = 1.0, min_grade: int = 2,
                            seed: int = 0, graded: bool = False) -> tuple[list[TrainingGroup], GroupReport]:
    """build_groups over a TREC folder's queries.tsv, qrels.txt, collection.tsv (and run.bm25.txt if present)."""
    run_file = folder / "run.bm25.txt"
    return build_groups(
        read_texts(require_file(folder / "queries.tsv", "queries"), "query"),
        read_qrels(require_file(folder / "qrels.txt", "qrels")),
        read_texts(require_file(folder / "collection.tsv", "collection"), "passage"),
        read_run(run_file) if is_input_file(run_file) else None,
        negatives=negatives, hard_fraction=hard_fraction, min_grade=min_grade, seed=seed, graded=graded,
    )


def _lower_graded(judged: dict[str, int], passages: dict[str, str], grade: int) -> list[str]:
    """The query's judged passages with text graded from 1 to `grade` - 1, in a fixed order."""
    return sorted((p for p, g in judged.items() if 0 < g < grade and p in passages), key=natural_key)


def _hard_pool(qid: str, judged: dict[str, int], passages: dict[str, str], run: Run | None, depth: int) -> list[str]:
    if run is not None and qid in run:
        return [d.pid for d in run[qid][:depth] if judged.get(d.pid, 0) == 0 and d.pid in passages]
    return sorted((p for p, g in judged.items() if g == 0 and p in passages), key=natural_key)


def _negatives(rng: random.Random, hard_pool: list[str], pool: list[str], judged: dict[str, int], n: int,
               hard_fraction: float) -> list[NegativePassage]:
    """All hard negatives (none when hard_fraction is 0); random ones when a draw of n needs some: as many as the
    hard ones (at least the draw's share), so that both kinds are drawn anew from pools of one size each epoch."""
    # A seeded order, not the run's: analyses that take a group's first negative (patch pairs, probes) get a
    # random hard one, not always the top-ranked non-relevant passage shared by all of the query's positives.
    hard = rng.sample(hard_pool, len(hard_pool)) if hard_fraction > 0 else []
    chosen = [NegativePassage("", "hard", pid) for pid in hard]
    needed = n - min(int(n * hard_fraction + 0.5), len(hard))  # half up, not to even
    if needed > 0:
        taken = set(hard)
        candidates = [p for p in pool if judged.get(p, 0) == 0 and p not in taken]
        count = min(max(needed, len(hard_pool)), len(candidates))
        chosen += [NegativePassage("", "random", pid) for pid in rng.sample(candidates, count)]
    return chosen


def load_training_groups(sources: tuple[str, ...], negatives: int, hard_fraction: float = 1.0,
                         min_grade: int = 2, seed: int = 0, graded: bool = False) -> list[TrainingGroup]:
    """Read every source: a .jsonl of groups, or a TREC folder whose judgments are turned into groups (each with
    every hard negative: the collator draws `negatives` of them anew in every epoch)."""
    groups: list[TrainingGroup] = []
    for source in map(data_path, sources):
        if source.is_dir():
            built, report = groups_from_trec_folder(source, negatives, hard_fraction, min_grade, seed, graded)
            log.info("%s: %d groups from %d queries (%d hard, %d lower-graded, %d random negatives); %d judged "
                     "pairs skipped (no text)", source, report.groups, report.queries, report.hard_negatives,
                     report.graded_negatives, report.random_negatives, report.skipped_missing_text)
            groups += built
        elif is_input_file(source):
            read = read_groups(source)
            if not graded and any(n.grade for g in read for n in g.negatives):
                raise DataError(f"{source}: holds partly relevant negatives (grade > 0), which this objective would "
                                "train as irrelevant; train it with objective graded_listwise, or rebuild the groups "
                                "without --graded")
            groups += read
        else:
            raise DataError(f"{source}: training data not found; give a group .jsonl file or a TREC folder")
    without = [g.qid for g in groups if not g.negatives]
    if without:
        raise DataError(f"query {without[0]} (and {len(without) - 1} more) has no negative passages; "
                        "every training group needs at least one")
    if not groups:
        raise DataError(f"no training groups in {', '.join(map(str, sources))}; give group .jsonl files with at "
                        "least one line, or TREC folders whose qrels have positives with text")
    return groups


@dataclass(frozen=True)
class GroupsSettings:
    """`relscope groups`: training groups (Tevatron jsonl) built from TREC folders' judgments."""

    data: tuple[str, ...] = field(metadata=option(
        "TREC folder with queries.tsv, collection.tsv, qrels.txt (and run.bm25.txt for hard negatives); repeat to "
        "combine years, e.g. --data dl21 --data dl23", repeat=True))
    negatives: int = field(default=7, metadata=option(
        "negatives a training step draws per group: groups keep every hard negative, with random ones added where "
        "fewer are left"))
    hard_fraction: float = field(default=1.0, metadata=option("share of hard negatives"))
    min_grade: int = field(default=2, metadata=option("lowest grade counted as positive"))
    seed: int = field(default=0, metadata=option("seed of the negatives' order and of the random negatives"))
    graded: bool = field(default=False, metadata=option(
        "keep each passage's judged grade, and give each positive its query's lower-graded passages as negatives "
        "(for objective graded_listwise)"))

    def __post_init__(self) -> None:
        """The options before any file is read (a collection takes minutes)."""
        if isinstance(self.negatives, bool) or not 1 <= self.negatives <= 1000:  # a group line holds their text
            raise ConfigError(f"--negatives {self.negatives}: give 1 to 1000 negatives per group (default 7)")
        if not 0.0 <= self.hard_fraction <= 1.0:  # also refuses nan
            raise ConfigError(f"--hard-fraction {self.hard_fraction}: give a share from 0 to 1 (default 1.0)")
        if isinstance(self.min_grade, bool) or not 1 <= self.min_grade <= MAX_GRADE:
            raise ConfigError(f"--min-grade {self.min_grade}: give a grade from 1 to {MAX_GRADE} (grade 0 marks the "
                              "non-relevant passages; default 2)")


def hold_out(groups: list[TrainingGroup], count: int, seed: int = 0) -> tuple[list[TrainingGroup], list[TrainingGroup]]:
    """(training groups, held-out groups): whole queries, drawn in a seeded order, until at least `count` groups are
    held out, so that no held-out query is also trained on (a query has one group per positive)."""
    if count <= 0:
        return groups, []
    queries = sorted({g.qid for g in groups}, key=natural_key)
    random.Random(f"hold-out:{seed}").shuffle(queries)
    per_query = Counter(g.qid for g in groups)
    held_queries: set[str] = set()
    for qid in queries:
        if sum(per_query[q] for q in held_queries) >= count:
            break
        held_queries.add(qid)
    held = [g for g in groups if g.qid in held_queries]
    train = [g for g in groups if g.qid not in held_queries]
    if not train or len(held) < count:
        raise DataError(f"eval_groups {count}: the training data has {len(groups)} groups of {len(queries)} queries; "
                        "hold out fewer groups so that some are left to train on")
    return train, held


TREC_INPUTS = ("queries.tsv", "qrels.txt", "collection.tsv", "run.bm25.txt")


def groups_job(settings: GroupsSettings, out: str | Path) -> list[tuple[Path, GroupReport]]:
    """Build the groups of every folder into one jsonl at `out` (its manifest beside it); each folder's report."""
    from relscope.config import to_mapping
    from relscope.data.groups import write_groups
    from relscope.io import atomic_write_json, check_output_file
    from relscope.manifest import build_manifest, manifest_beside

    check_output_file(out, tuple(Path(folder) / name for folder in settings.data for name in TREC_INPUTS))
    groups: list[TrainingGroup] = []
    reports = []
    for folder in map(Path, settings.data):
        built, report = groups_from_trec_folder(folder, settings.negatives, settings.hard_fraction,
                                                settings.min_grade, settings.seed, settings.graded)
        groups += built
        reports.append((folder, report))
    write_groups(groups, out)
    inputs = {f"{folder}/{name}": folder / name for folder, _ in reports for name in TREC_INPUTS
              if (folder / name).is_file()}
    atomic_write_json(manifest_beside(out), build_manifest(
        to_mapping(settings), inputs, groups=len(groups), reports={str(f): asdict(r) for f, r in reports}))
    return reports
