"""Prompt templates: pointwise yes/no judging, pointwise scoring, pairwise A/B.

A template is data. The slots are {query} and {document} (pointwise) or
{document_a} and {document_b} (pairwise); everything else is instruction text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

from relscope.errors import ConfigError
from relscope.registry import Registry


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    kind: Literal["pointwise", "pairwise"]
    user: str
    system: str | None = None
    # Words whose next-token logits the head reads at the last position (None: a trained score head).
    answers: tuple[str, str] | None = ("yes", "no")
    # Wrap in the tokenizer's chat template when it has one.
    chat: bool = True
    # Appended instead of the assistant turn when no chat template is used (base models).
    plain_suffix: str = "\nAnswer:"
    # RankLLaMA-style: read the score at an appended end-of-sequence token.
    append_eos: bool = False

    def __post_init__(self) -> None:
        for slot in self.document_slots + ("query",):
            if "{" + slot + "}" not in self.user:
                raise ConfigError(f"template {self.name!r}: user text must contain the slot {{{slot}}}")

    @property
    def document_slots(self) -> tuple[str, ...]:
        """The passage slots the user text must contain: one for pointwise, A and B for pairwise."""
        return ("document",) if self.kind == "pointwise" else ("document_a", "document_b")

    def fingerprint(self) -> str:
        """A stable hash recorded in every manifest: same hash, same prompts."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


TEMPLATES: Registry[PromptTemplate] = Registry("prompt template")

TEMPLATES.register(
    "yes_no",
    PromptTemplate(
        name="yes_no",
        kind="pointwise",
        system="You judge whether a passage answers a search query.",
        user="Query: {query}\nPassage: {document}\nDoes the passage answer the query? Answer yes or no.",
        answers=("yes", "no"),
    ),
)

TEMPLATES.register(
    "score",
    PromptTemplate(
        name="score",
        kind="pointwise",
        user="query: {query}\ndocument: {document}",
        answers=None,
        chat=False,
        plain_suffix="",
        append_eos=True,
    ),
)

TEMPLATES.register(
    "pairwise",
    PromptTemplate(
        name="pairwise",
        kind="pairwise",
        system="You judge which of two passages better answers a search query.",
        user=(
            "Query: {query}\nDocument A: {document_a}\nDocument B: {document_b}\n"
            "Which document is more relevant to the query? Answer A or B."
        ),
        answers=("A", "B"),
    ),
)


def get_template(name: str) -> PromptTemplate:
    """The registered template `name`; a ConfigError lists the known ones otherwise."""
    return TEMPLATES.get(name)
