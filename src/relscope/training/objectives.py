"""Training objectives as registered strategies.

An objective turns a training group (one positive, n negatives) into prompts, and the
scores of those prompts into a loss plus two per-group figures for the logs:
`correct` (the positive comes out on top) and `p_correct` (the model's probability of
the right answer, averaged over the group's decisions).

    listwise  score template + linear head; softmax cross-entropy over the group (Tevatron/RankLLaMA)
    graded_listwise  the same prompts and head; cross-entropy against the group's grades as a distribution
              (ListNet's top-one loss, gains 2^grade - 1): a group whose negatives are all grade 0 gives listwise's loss
    yes_no    yes/no template + answer head; binary cross-entropy on logit(yes) - logit(no) per passage
    pairwise  A/B template + answer head; every (positive, negative) pair shown in both orders
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from relscope.prompts.tokenize import PromptBuilder, TokenizedPrompt
from relscope.registry import Registry


@dataclass
class GroupStats:
    loss: torch.Tensor  # scalar, mean over the batch's groups
    correct: torch.Tensor  # (groups,) 1.0 where the positive wins
    p_correct: torch.Tensor  # (groups,) mean probability of the right decision


class Objective:
    """A training objective: the prompts one group makes, and the loss over their scores."""

    name: str
    template: str  # the default prompt template (its head follows from it: models.heads.default_head)
    graded = False  # whether loss() reads the passages' judged grades (and training groups keep them)

    def prompts(self, builder: PromptBuilder, query: str, positive: str, negatives: list[str]) -> list[TokenizedPrompt]:
        """The prompts of one training group (a query, its positive and negatives), in the order `loss` expects."""
        raise NotImplementedError

    def prompts_per_group(self, negatives: int) -> int:
        """How many prompts a group with `negatives` negatives makes (the rows of one group's scores)."""
        raise NotImplementedError

    def loss(self, scores: torch.Tensor, grades: torch.Tensor | None = None,
             copies: torch.Tensor | None = None) -> GroupStats:
        """scores: (groups, prompts_per_group), in the order `prompts` made them; grades (graded objectives): the
        judged grade of each group's positive and negatives, (groups, 1 + negatives); copies: how often each passage
        stands in its group (a group with fewer negatives than asked repeats them), so that a repeat adds no gain."""
        raise NotImplementedError

    def pair_accuracy(self, scores: torch.Tensor) -> torch.Tensor:
        """(groups,) the share of each group's (positive, negative) pairs ordered right: chance 1/2 whatever the
        number of negatives (the held-out accuracy of study 001)."""
        return _pairs_in_order(scores)


class _OnePassagePerPrompt(Objective):
    """The positive first, then the negatives, one prompt each."""

    def prompts(self, builder: PromptBuilder, query: str, positive: str, negatives: list[str]) -> list[TokenizedPrompt]:
        """The positive's prompt, then each negative's."""
        return [builder.build(query, [text]) for text in [positive, *negatives]]

    def prompts_per_group(self, negatives: int) -> int:
        """One prompt per passage: the positive and each negative."""
        return negatives + 1


def _pairs_in_order(scores: torch.Tensor) -> torch.Tensor:
    """(groups,) the share of each group's (positive, negative) pairs whose positive scores higher: chance 1/2."""
    return (scores[:, 0:1] > scores[:, 1:]).float().mean(-1).detach()


class Listwise(_OnePassagePerPrompt):
    """Cross-entropy of the positive against its group (as Tevatron's train_group_size)."""

    name, template = "listwise", "score"

    def loss(self, scores: torch.Tensor, grades: torch.Tensor | None = None,
             copies: torch.Tensor | None = None) -> GroupStats:
        """Cross-entropy of the positive (column 0) against the whole group."""
        scores = scores.float()
        target = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
        p_positive = scores.softmax(-1)[:, 0]
        return GroupStats(F.cross_entropy(scores, target), _positive_wins(scores), p_positive.detach())


class GradedListwise(_OnePassagePerPrompt):
    """Cross-entropy against the group's grades made a distribution: target_i = gain_i / sum(gain), gain = 2^grade - 1
    (ListNet's top-one probability with nDCG's exponential gains, Cao et al. 2007; Burges et al. 2005). A negative
    graded 1 or 2 is then partly right, not as wrong as an irrelevant one. With every negative at grade 0 the target
    is one-hot on the positive: listwise's loss exactly."""

    name, template, graded = "graded_listwise", "score", True

    def loss(self, scores: torch.Tensor, grades: torch.Tensor | None = None,
             copies: torch.Tensor | None = None) -> GroupStats:
        """Cross-entropy of the scores' softmax against the grades' gain distribution (column 0: the positive)."""
        if grades is None:
            raise ValueError("graded_listwise needs each passage's grade (the collator's 'grades')")
        scores = scores.float()
        gains = torch.exp2(grades.to(scores.device, torch.float32)) - 1
        if copies is not None:  # a passage drawn k times shares its gain: the target is the group's, not the draw's
            gains = gains / copies.to(scores.device, torch.float32)
        target = gains / gains.sum(-1, keepdim=True)
        loss = -(target * scores.log_softmax(-1)).sum(-1).mean()
        return GroupStats(loss, _positive_wins(scores), scores.softmax(-1)[:, 0].detach())


class YesNo(_OnePassagePerPrompt):
    """Each passage judged on its own: 'yes' for the positive, 'no' for every negative."""

    name, template = "yes_no", "yes_no"

    def loss(self, scores: torch.Tensor, grades: torch.Tensor | None = None,
             copies: torch.Tensor | None = None) -> GroupStats:
        """Binary cross-entropy of each passage's yes/no score: yes for column 0, no for the rest."""
        scores = scores.float()
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        loss = F.binary_cross_entropy_with_logits(scores, labels)
        p_right = torch.where(labels.bool(), scores.sigmoid(), 1 - scores.sigmoid())
        return GroupStats(loss, _positive_wins(scores), p_right.mean(-1).detach())


class Pairwise(Objective):
    """For each negative: (positive, negative) answered A and (negative, positive) answered B.

    Showing both orders cancels the position bias of the A/B answer.
    """

    name, template = "pairwise", "pairwise"

    def prompts(self, builder: PromptBuilder, query: str, positive: str, negatives: list[str]) -> list[TokenizedPrompt]:
        """For each negative, (positive, negative) then (negative, positive)."""
        prompts = []
        for text in negatives:
            prompts += [builder.build(query, [positive, text]), builder.build(query, [text, positive])]
        return prompts

    def prompts_per_group(self, negatives: int) -> int:
        """Two prompts per negative, one in each order."""
        return 2 * negatives

    def loss(self, scores: torch.Tensor, grades: torch.Tensor | None = None,
             copies: torch.Tensor | None = None) -> GroupStats:
        """Binary cross-entropy of each comparison: A where the positive comes first, B where it comes second."""
        scores = scores.float()  # logit(A) - logit(B); even columns want A, odd columns want B
        signed = torch.cat([scores[:, 0::2], -scores[:, 1::2]], dim=-1)
        loss = F.binary_cross_entropy_with_logits(signed, torch.ones_like(signed))
        p_right = signed.sigmoid()
        # The positive wins a comparison when its two-order average probability exceeds 1/2 (duoT5 SYM-SUM).
        pair_wins = (p_right[:, : scores.shape[1] // 2] + p_right[:, scores.shape[1] // 2:]) > 1.0
        return GroupStats(loss, pair_wins.all(-1).float(), p_right.mean(-1).detach())

    def pair_accuracy(self, scores: torch.Tensor) -> torch.Tensor:
        """(groups,) the share of a group's prompts answered right (A when the positive comes first, B when second):
        each prompt is one A-or-B question, as in study 001's eval accuracy; chance 1/2."""
        scores = scores.float()
        return torch.cat([scores[:, 0::2] > 0, scores[:, 1::2] < 0], dim=-1).float().mean(-1).detach()


def _positive_wins(scores: torch.Tensor) -> torch.Tensor:
    return (scores[:, 0:1] > scores[:, 1:]).all(-1).float().detach()


OBJECTIVES: Registry[Objective] = Registry("training objective")
for _objective in (Listwise(), GradedListwise(), YesNo(), Pairwise()):
    OBJECTIVES.register(_objective.name, _objective)

