"""Training data: groups from jsonl files or TREC folders, and the collator that makes prompts of them."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import Dataset, Sampler

from relscope.data.dataset import RerankDataset, data_path, load_rerank_dataset, resolve_files
from relscope.data.groups import TrainingGroup, read_groups
from relscope.data.training import groups_from_trec_folder
from relscope.errors import ConfigError, DataError
from relscope.io import is_input_file
from relscope.models.scoring import pad_sequences
from relscope.prompts.tokenize import PromptBuilder
from relscope.training.config import DevSettings
from relscope.training.objectives import Objective

log = logging.getLogger(__name__)


def load_dev_run(dev: DevSettings) -> RerankDataset:
    """The dev run's top-k with text and judgments (the first `max_queries` queries when set)."""
    dataset = load_rerank_dataset(resolve_files(data_path(dev.data)), dev.top_k)
    if dataset.qrels is None:
        raise ConfigError(f"{dev.data}: no qrels.txt; a dev run is measured against judgments, so give a "
                          "folder that has them")
    return dataset.first_queries(dev.max_queries)


def load_training_groups(sources: tuple[str, ...], negatives: int, hard_fraction: float = 1.0,
                         min_grade: int = 2, seed: int = 0) -> list[TrainingGroup]:
    """Read every source: a .jsonl of groups, or a TREC folder whose judgments are turned into groups (each with
    every hard negative: the collator draws `negatives` of them anew in every epoch)."""
    groups: list[TrainingGroup] = []
    for source in map(data_path, sources):
        if source.is_dir():
            built, report = groups_from_trec_folder(source, negatives, hard_fraction, min_grade, seed)
            log.info("%s: %d groups from %d queries (%d hard, %d random negatives); %d judged pairs skipped "
                     "(no text)", source, report.groups, report.queries, report.hard_negatives,
                     report.random_negatives, report.skipped_missing_text)
            groups += built
        elif is_input_file(source):
            groups += read_groups(source)
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


class Draw(NamedTuple):
    """One group in one epoch: the sampler says which, the collator draws its positive and negatives."""

    group: int
    epoch: int


class GroupDataset(Dataset):
    """Item `Draw(i, epoch)` is group i in that epoch; the collator picks its positive and negatives."""

    def __init__(self, groups: list[TrainingGroup]) -> None:
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, item: Draw) -> Draw:
        return item


class EpochSeededSampler(Sampler[Draw]):
    """A permutation drawn from (seed, epoch) alone: the same in 1 or N processes and on resume.

    Deliberately not a RandomSampler: Accelerate swaps those for samplers seeded another way in
    multi-process runs, which would give N processes other batches than one process. Each item
    carries its epoch, so the collator's draw changes from epoch to epoch on every process alike.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter([Draw(index, self.epoch) for index in torch.randperm(self.size, generator=generator).tolist()])


def draw_group(group: TrainingGroup, negatives: int, hard_fraction: float, rng: random.Random) -> tuple[str, list[str]]:
    """(positive, negatives) for one step, as Tevatron samples a group each epoch: one of its positives, and
    `negatives` of its negatives without repeats, hard ones (kind "hard") making up `hard_fraction` of them and the
    others random ones; a kind that runs short is made up by the other, and a group with fewer negatives than
    asked repeats them."""
    positive = rng.choice(group.positives)
    hard = [n.text for n in group.negatives if n.kind == "hard"]
    other = [n.text for n in group.negatives if n.kind != "hard"]
    n_other = min(negatives - min(int(negatives * hard_fraction + 0.5), len(hard)), len(other))
    n_hard = min(negatives - n_other, len(hard))
    chosen = rng.sample(hard, n_hard) + rng.sample(other, n_other)
    return positive, [chosen[i % len(chosen)] for i in range(negatives)]


@dataclass
class GroupCollator:
    """Draws -> one padded batch of prompts, groups x prompts_per_group rows in draw order.

    The positive and the negatives of group i in epoch e are drawn anew from all of the group's
    (see draw_group), seeded by (seed, epoch, i): the same in every process and on every resume.
    """

    groups: list[TrainingGroup]
    objective: Objective
    builder: PromptBuilder
    negatives: int
    pad_id: int
    seed: int = 0
    hard_fraction: float = 1.0

    def __call__(self, draws: list[Draw]) -> dict[str, torch.Tensor]:
        prompts = []
        for index, epoch in draws:
            group = self.groups[index]
            rng = random.Random(f"{self.seed}:{epoch}:{index}")  # str seeds hash alike in every process and run
            positive, chosen = draw_group(group, self.negatives, self.hard_fraction, rng)
            prompts += self.objective.prompts(self.builder, group.query, positive, chosen)
        ids, mask, last = pad_sequences([p.input_ids for p in prompts], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "last": last}
