"""Training data: groups from jsonl files or TREC folders, and the collator that makes prompts of them."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import Dataset, Sampler

from relscope.data.groups import NegativePassage, TrainingGroup
from relscope.models.scoring import pad_sequences
from relscope.prompts.tokenize import PromptBuilder
from relscope.training.objectives import Objective

log = logging.getLogger(__name__)


TARGETS = ("grades", "copies")  # batch keys the loss reads and the model does not


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
        """Iterate in `epoch`'s permutation from now on (the Trainer calls this as each epoch starts)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter([Draw(index, self.epoch) for index in torch.randperm(self.size, generator=generator).tolist()])


def draw_passages(group: TrainingGroup, negatives: int, hard_fraction: float,
                  rng: random.Random) -> tuple[int, list[NegativePassage]]:
    """(index of the positive, negatives) for one step, as Tevatron samples a group each epoch: one of its positives,
    and `negatives` of its negatives without repeats, hard ones (kind "hard") making up `hard_fraction` of them and the
    others random ones; a kind that runs short is made up by the other, and a group with fewer negatives than
    asked repeats them."""
    positive = rng.choice(range(len(group.positives)))  # the same draw as rng.choice(group.positives)
    hard = [n for n in group.negatives if n.kind == "hard"]
    other = [n for n in group.negatives if n.kind != "hard"]
    n_other = min(negatives - min(int(negatives * hard_fraction + 0.5), len(hard)), len(other))
    n_hard = min(negatives - n_other, len(hard))
    chosen = rng.sample(hard, n_hard) + rng.sample(other, n_other)
    return positive, [chosen[i % len(chosen)] for i in range(negatives)]


@dataclass
class GroupCollator:
    """Draws -> one padded batch of prompts, groups x prompts_per_group rows in draw order.

    The positive and the negatives of group i in epoch e are drawn anew from all of the group's
    (see draw_passages), seeded by (seed, epoch, i): the same in every process and on every resume.
    """

    groups: list[TrainingGroup]
    objective: Objective
    builder: PromptBuilder
    negatives: int
    pad_id: int
    seed: int = 0
    hard_fraction: float = 1.0
    pad_to_multiple_of: int = 1

    def __call__(self, draws: list[Draw]) -> dict[str, torch.Tensor]:
        prompts, grades, copies = [], [], []
        for index, epoch in draws:
            group = self.groups[index]
            rng = random.Random(f"{self.seed}:{epoch}:{index}")  # str seeds hash alike in every process and run
            positive, chosen = draw_passages(group, self.negatives, self.hard_fraction, rng)
            prompts += self.objective.prompts(self.builder, group.query, group.positives[positive],
                                              [n.text for n in chosen])
            grades.append([group.positive_grade(positive), *(n.grade for n in chosen)])
            copies.append([1, *(sum(other is n for other in chosen) for n in chosen)])  # repeats of a short group
        ids, mask, last = pad_sequences([p.input_ids for p in prompts], self.pad_id,
                                        pad_to_multiple_of=self.pad_to_multiple_of)
        batch = {"input_ids": ids, "attention_mask": mask, "last": last}
        if self.objective.graded:  # (groups, passages): the graded loss's targets, in the prompts' order
            batch["grades"] = torch.tensor(grades, dtype=torch.float32)
            batch["copies"] = torch.tensor(copies, dtype=torch.float32)
        return batch
