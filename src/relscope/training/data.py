"""Training data: groups from jsonl files or TREC folders, and the collator that makes prompts of them."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from relscope.data.dataset import RerankDataset, data_path, load_rerank_dataset, resolve_files
from relscope.data.groups import TrainingGroup, read_groups
from relscope.data.training import groups_from_trec_folder
from relscope.errors import ConfigError, DataError
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
    """Read every source: a .jsonl of groups, or a TREC folder whose judgments are turned into groups."""
    groups: list[TrainingGroup] = []
    for source in map(data_path, sources):
        if source.is_dir():
            built, report = groups_from_trec_folder(source, max(negatives, 7), hard_fraction, min_grade, seed)
            log.info("%s: %d groups from %d queries; %d judged pairs skipped (no text)",
                     source, report.groups, report.queries, report.skipped_missing_text)
            groups += built
        elif source.is_file():
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


class GroupDataset(Dataset):
    """Item i is group i; the collator picks its positive and negatives."""

    def __init__(self, groups: list[TrainingGroup]) -> None:
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> int:
        return index


class EpochSeededSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch) alone: the same in 1 or N processes and on resume.

    Deliberately not a RandomSampler: Accelerate swaps those for samplers seeded another way in
    multi-process runs, which would give N processes other batches than one process.
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
        return iter(torch.randperm(self.size, generator=generator).tolist())


@dataclass
class GroupCollator:
    """Groups -> one padded batch of prompts, groups x prompts_per_group rows in group order.

    The positive and the negatives of group i are a seeded sample, the same in every
    process and on every resume. Groups with fewer negatives than asked repeat them.
    """

    groups: list[TrainingGroup]
    objective: Objective
    builder: PromptBuilder
    negatives: int
    pad_id: int
    seed: int = 0

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        prompts = []
        for index in indices:
            group = self.groups[index]
            rng = random.Random(f"{self.seed}:{index}")
            positive = rng.choice(group.positives)
            pool = [n.text for n in group.negatives]
            chosen = rng.sample(pool, self.negatives) if len(pool) >= self.negatives else \
                [pool[i % len(pool)] for i in range(self.negatives)]
            prompts += self.objective.prompts(self.builder, group.query, positive, chosen)
        ids, mask, last = pad_sequences([p.input_ids for p in prompts], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "last": last}
