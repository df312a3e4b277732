"""Clean/corrupted prompt pairs whose tokens line up one to one.

Perturbations (what the corrupted prompt changes):
    negative  pointwise: the same query with its relevant passage (clean) and a non-relevant one (corrupted);
              pairwise: the same two passages, the relevant one first (clean) and swapped (corrupted)
    inject    pointwise: the non-relevant passage with the query's words written in after its first word (clean)
              and the passage as it is (corrupted): what exact query-term matches alone do
Patching a position copies the clean activation into the corrupted run at the same index, so both prompts must
have the same token layout (the same spans). The passages are cut to the same token count to make it so; a pair
that still differs (a merge at a passage boundary) is skipped and counted, never patched misaligned. So is a pair
whose two prompts are the same tokens (a negative equal to the positive): it has nothing to patch and no effect to
divide by.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relscope.analysis.patching.sites import PERTURBATIONS
from relscope.data.groups import TrainingGroup
from relscope.errors import ConfigError, DataError
from relscope.prompts.tokenize import PromptBuilder, TokenizedPrompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class PatchPair:
    qid: str
    clean: TokenizedPrompt
    corrupted: TokenizedPrompt
    negative_kind: str = "hard"


@dataclass(frozen=True)
class PairReport:
    pairs: int
    skipped_misaligned: int
    skipped_no_negative: int
    skipped_identical: int = 0  # clean and corrupted the same tokens: no token differs, nothing to patch


def same_layout(a: TokenizedPrompt, b: TokenizedPrompt) -> bool:
    """Whether the two prompts have the same length and the same spans, so positions can be patched one to one."""
    return len(a) == len(b) and [(s.group, s.start, s.end) for s in a.spans] == [(s.group, s.start, s.end)
                                                                            for s in b.spans]


def cut_to_tokens(tokenizer: PreTrainedTokenizerBase, text: str, count: int) -> str:
    """The longest prefix of `text` that tokenises (alone) into at most `count` tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= count:
        return text
    return text[: enc["offset_mapping"][count - 1][1]].rstrip() if count > 0 else ""


def equal_length_passages(tokenizer: PreTrainedTokenizerBase, first: str, second: str) -> tuple[str, str]:
    """Both passages cut to the token count of the shorter, so the two prompts can share one layout."""
    n = min(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (first, second))
    return cut_to_tokens(tokenizer, first, n), cut_to_tokens(tokenizer, second, n)


def inject_query(tokenizer: PreTrainedTokenizerBase, query: str, passage: str) -> str:
    """`passage` with the query's words written over as many of its tokens as the query has, after its first word
    (which stays, so that the passage meets the template text exactly as before)."""
    query = " ".join(query.split())
    first, _, body = " ".join(passage.split()).partition(" ")
    count = len(tokenizer(" " + query, add_special_tokens=False)["input_ids"])
    enc = tokenizer(" " + body, add_special_tokens=False, return_offsets_mapping=True)
    rest = (" " + body)[enc["offset_mapping"][min(count, len(enc["input_ids"])) - 1][1]:] if enc["input_ids"] else ""
    return " ".join(f"{first} {query} {rest}".split())


def aligned_pair(builder: PromptBuilder, query: str, relevant: str, other: str, qid: str,
                 kind: str = "hard") -> PatchPair | None:
    """The clean/corrupted pair for this query, or None when no equal layout exists."""
    tokenizer = builder.tokenizer
    relevant, other = equal_length_passages(tokenizer, " ".join(relevant.split()), " ".join(other.split()))
    pairwise = builder.template.kind == "pairwise"
    for _ in range(4):
        clean = builder.build(query, [relevant, other] if pairwise else [relevant])
        corrupted = builder.build(query, [other, relevant] if pairwise else [other])
        if same_layout(clean, corrupted):
            return PatchPair(qid, clean, corrupted, kind)
        # In context a passage can take a token more or fewer than alone (its first word merges with the space
        # before it, or not): cut the one that came out longer by the difference, else both by one, and retry.
        in_relevant = _document_tokens(clean, 0)
        in_other = _document_tokens(clean, 1) if pairwise else _document_tokens(corrupted, 0)
        alone = {t: len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (relevant, other)}
        if in_relevant > in_other:
            relevant = cut_to_tokens(tokenizer, relevant, alone[relevant] - (in_relevant - in_other))
        elif in_other > in_relevant:
            other = cut_to_tokens(tokenizer, other, alone[other] - (in_other - in_relevant))
        else:
            relevant, other = (cut_to_tokens(tokenizer, t, min(alone.values()) - 1) for t in (relevant, other))
    return None


def _document_tokens(prompt: TokenizedPrompt, index: int) -> int:
    return sum(s.end - s.start for s in prompt.spans if s.group == "document" and s.index == index)


def build_pairs(groups: Sequence[TrainingGroup], builder: PromptBuilder, max_pairs: int | None = None,
                negative_kind: str = "hard", seed: int = 0,
                perturbation: str = "negative") -> tuple[list[PatchPair], PairReport]:
    """One pair per group: its first positive against its first negative of `negative_kind` that lines up with
    it token for token, or (inject) that negative with and without the query's words written in."""
    if perturbation not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {perturbation!r}; use one of {', '.join(PERTURBATIONS)}")
    if perturbation == "inject" and builder.template.kind == "pairwise":
        raise ConfigError("the inject perturbation is pointwise; use a pointwise template (yes_no, score)")
    order = list(groups)
    random.Random(seed).shuffle(order)
    pairs, misaligned, no_negative, identical = [], 0, 0, 0
    for group in order:
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
        negatives = [n.text for n in group.negatives  # a graded group's partly relevant passages are no negatives
                     if (negative_kind == "any" or n.kind == negative_kind) and not n.grade]
        if not group.positives or not negatives:
            no_negative += 1
            continue
        pair, same = None, False
        for negative in negatives:  # the first that lines up with the positive (most do at once)
            clean = group.positives[0] if perturbation == "negative" else inject_query(builder.tokenizer,
                                                                                       group.query, negative)
            pair = aligned_pair(builder, group.query, clean, negative, group.qid, negative_kind)
            if pair is not None and pair.clean.input_ids == pair.corrupted.input_ids:
                pair, same = None, True  # no token differs: try the next negative
            if pair is not None:
                break
        if pair is not None:
            pairs.append(pair)
        elif same:
            identical += 1
        else:
            misaligned += 1
    if not pairs:
        raise DataError(f"no clean/corrupted pair could be built ({no_negative} groups without a {negative_kind!r} "
                        f"negative, {misaligned} misaligned, {identical} with identical clean and corrupted "
                        "prompts); use other groups or another negative kind")
    return pairs, PairReport(len(pairs), misaligned, no_negative, identical)
