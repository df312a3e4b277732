"""Each objective: its prompts, and its loss against the textbook formula written out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_tokenizer

from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder
from relscope.training.objectives import OBJECTIVES

NEGATIVES = ["Bananas ripen.", "Mountains rise.", "Rivers flow."]
SCORES = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, -0.5]])  # group 0: positive wins; group 1: it loses


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_listwise_is_softmax_cross_entropy_of_the_positive():
    stats = OBJECTIVES.get("listwise").loss(SCORES)
    expected = sum(-math.log(math.exp(row[0]) / sum(math.exp(s) for s in row)) for row in SCORES.tolist()) / 2
    assert stats.loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats.correct.tolist() == [1.0, 0.0]
    assert stats.p_correct[0].item() == pytest.approx(math.exp(2) / (math.exp(2) + math.exp(0.5) + math.exp(-1)))


def test_yes_no_is_binary_cross_entropy_with_yes_for_the_positive_only():
    stats = OBJECTIVES.get("yes_no").loss(SCORES)
    terms = []
    for row in SCORES.tolist():
        terms += [-math.log(_sigmoid(row[0]))] + [-math.log(1 - _sigmoid(s)) for s in row[1:]]
    assert stats.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    assert stats.correct.tolist() == [1.0, 0.0]
    row = SCORES[0].tolist()
    assert stats.p_correct[0].item() == pytest.approx(
        (_sigmoid(row[0]) + (1 - _sigmoid(row[1])) + (1 - _sigmoid(row[2]))) / 3, rel=1e-6)


def test_pairwise_wants_a_then_b_and_needs_both_orders_to_win():
    # columns: (pos, n1)->A, (n1, pos)->B, (pos, n2)->A, (n2, pos)->B
    scores = torch.tensor([[3.0, -3.0, 1.0, -1.0],  # wins both pairs in both orders
                           [3.0, 4.0, 1.0, -1.0]])  # says A more surely when the negative is A: loses pair 1
    stats = OBJECTIVES.get("pairwise").loss(scores)
    signed = [[3.0, 3.0, 1.0, 1.0], [3.0, -4.0, 1.0, 1.0]]
    expected = sum(-math.log(_sigmoid(s)) for row in signed for s in row) / 8
    assert stats.loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats.correct.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("name,per_group", [("listwise", 4), ("yes_no", 4), ("pairwise", 6)])
def test_prompts_put_the_positive_where_the_loss_expects_it(name, per_group):
    objective = OBJECTIVES.get(name)
    builder = PromptBuilder(tiny_tokenizer(), get_template(objective.template), 256)
    prompts = objective.prompts(builder, "capital of france", "Paris is the capital.", NEGATIVES)
    assert len(prompts) == objective.prompts_per_group(3) == per_group
    decoded = [builder.tokenizer.decode(p.input_ids).split("capital of france", 1)[1] for p in prompts]
    if name == "pairwise":
        for k, negative in enumerate(NEGATIVES):
            a_first, b_first = decoded[2 * k], decoded[2 * k + 1]
            assert a_first.index("Paris") < a_first.index(negative)
            assert b_first.index(negative) < b_first.index("Paris")
    else:
        assert "Paris" in decoded[0] and all("Paris" not in d for d in decoded[1:])


def test_unknown_objective_names_the_choices():
    with pytest.raises(Exception, match="listwise, pairwise, yes_no"):
        OBJECTIVES.get("pointwise")


def test_the_held_out_accuracy_counts_pairs_so_that_chance_is_one_half():
    """Study 001's eval accuracy is over A-or-B pairs: a group with three negatives is three pairs, not one race."""
    from relscope.training.objectives import OBJECTIVES

    pointwise = torch.tensor([[3.0, 1.0, 4.0, 0.0]])  # the positive beats two of its three negatives
    assert OBJECTIVES.get("listwise").pair_accuracy(pointwise).tolist() == pytest.approx([2 / 3])
    assert OBJECTIVES.get("yes_no").pair_accuracy(pointwise).tolist() == pytest.approx([2 / 3])
    pairwise = torch.tensor([[2.0, -1.0, -0.5, 0.5]])  # (pos, neg1) A right, (neg1, pos) B right; neg2: both wrong
    assert OBJECTIVES.get("pairwise").pair_accuracy(pairwise).tolist() == pytest.approx([0.5])


def test_graded_listwise_with_only_irrelevant_negatives_is_listwise():
    grades = torch.tensor([[2.0, 0.0, 0.0], [3.0, 0.0, 0.0]])  # the positive's grade scales no one-hot target
    graded = OBJECTIVES.get("graded_listwise").loss(SCORES, grades)
    plain = OBJECTIVES.get("listwise").loss(SCORES)
    assert graded.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
    assert graded.correct.tolist() == plain.correct.tolist()


def test_graded_listwise_is_smallest_where_the_softmax_is_the_gain_distribution():
    """ListNet's top-one loss is the cross-entropy to gains 2^g - 1 made a distribution: at scores = log(gain) it
    equals that distribution's entropy, and no other scores do better."""
    objective = OBJECTIVES.get("graded_listwise")
    grades = torch.tensor([[3.0, 2.0, 1.0, 1.0]])
    gains = [7.0, 3.0, 1.0, 1.0]
    entropy = -sum(g / 12 * math.log(g / 12) for g in gains)
    best = torch.tensor([[math.log(g) for g in gains]], requires_grad=True)
    stats = objective.loss(best, grades)
    assert stats.loss.item() == pytest.approx(entropy, rel=1e-6)
    stats.loss.backward()
    assert best.grad.abs().max().item() < 1e-6
    for other in ([2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [5.0, 0.0, -1.0, -1.0]):
        assert objective.loss(torch.tensor([other]), grades).loss.item() > entropy + 1e-3


def test_graded_listwise_needs_grades():
    with pytest.raises(ValueError, match="grade"):
        OBJECTIVES.get("graded_listwise").loss(SCORES)


def test_a_repeated_negative_shares_its_gain():
    """A short group repeats its one grade-2 negative three times: the target is the group's (7 : 3), not the
    draw's (7 : 3 : 3 : 3)."""
    objective = OBJECTIVES.get("graded_listwise")
    scores = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    repeated = objective.loss(scores, torch.tensor([[3.0, 2.0, 2.0, 2.0]]), torch.tensor([[1.0, 3.0, 3.0, 3.0]]))
    p = scores.softmax(-1)[0]
    assert repeated.loss.item() == pytest.approx(-(0.7 * math.log(p[0]) + 0.1 * 3 * math.log(p[1])), rel=1e-6)
