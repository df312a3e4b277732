"""Prompt templates: pointwise yes/no judging, pointwise scoring, pairwise A/B.

A template is data. The slots are {query} and {document} (pointwise) or
{document_a} and {document_b} (pairwise); everything else is instruction text.

The registered templates are written as three parts (the query line, the document line(s), the instruction) and a
layout, the order of those parts: query-document-instruction by default. Study 002 puts the document first, so that
the query can attend to the document under the causal mask and query positions carry effects; `with_layout` gives the
same template in another order (the analyses of patching use document-query-instruction by default).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Literal

from relscope.errors import ConfigError
from relscope.registry import Registry

LAYOUTS = ("query-document-instruction", "document-query-instruction", "instruction-document-query")
DEFAULT_LAYOUT = LAYOUTS[0]
PART_NAMES = ("query", "document", "instruction")


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt as data: its user text with slots, how it is wrapped, and the answer words its head reads."""

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
    # The user text as (part, text) pairs in the default order, for templates that offer other layouts.
    parts: tuple[tuple[str, str], ...] = ()
    layout: str = DEFAULT_LAYOUT

    def __post_init__(self) -> None:
        """Every slot is in the user text, and the parts (when given) are the user text in the default layout."""
        if self.parts and "\n".join(text for _, text in self.parts) != self.user and self.layout == DEFAULT_LAYOUT:
            raise ConfigError(f"template {self.name!r}: its parts do not make up its user text")
        for slot in self.document_slots + ("query",):
            if "{" + slot + "}" not in self.user:
                raise ConfigError(f"template {self.name!r}: user text must contain the slot {{{slot}}}")

    @property
    def document_slots(self) -> tuple[str, ...]:
        """The passage slots the user text must contain: one for pointwise, A and B for pairwise."""
        return ("document",) if self.kind == "pointwise" else ("document_a", "document_b")

    def with_layout(self, layout: str) -> PromptTemplate:
        """This template with its parts in `layout`'s order (the part a template lacks, e.g. an instruction, is
        left out); a template written as one text has only its own layout."""
        if layout not in LAYOUTS:
            raise ConfigError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        if layout == self.layout:
            return self
        if not self.parts:
            raise ConfigError(f"template {self.name!r} is one text, not parts: it has no layout but {self.layout}")
        texts = dict(self.parts)
        user = "\n".join(texts[part] for part in layout.split("-") if part in texts)
        return replace(self, user=user, layout=layout)

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
        parts=(("query", "Query: {query}"), ("document", "Passage: {document}"),
               ("instruction", "Does the passage answer the query? Answer yes or no.")),
    ),
)

TEMPLATES.register(
    "score",
    PromptTemplate(
        name="score",
        kind="pointwise",
        user="query: {query}\ndocument: {document}",
        parts=(("query", "query: {query}"), ("document", "document: {document}")),
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
        parts=(("query", "Query: {query}"), ("document", "Document A: {document_a}\nDocument B: {document_b}"),
               ("instruction", "Which document is more relevant to the query? Answer A or B.")),
    ),
)


def get_template(name: str, layout: str = DEFAULT_LAYOUT) -> PromptTemplate:
    """The registered template `name` in `layout`; a ConfigError lists the known ones otherwise."""
    return TEMPLATES.get(name).with_layout(layout)
