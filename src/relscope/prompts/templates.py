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
    # How an answer word becomes its token: "auto" reads the word as the model would write it after this prompt
    # (space-led after plain text: PromptBuilder.answer_ids); "bare" reads the first token of the word tokenised
    # alone, as the published rerankers' own code does (tokenizer("Yes", add_special_tokens=False)[0]).
    answer_rule: Literal["auto", "bare"] = "auto"
    # Where the text comes from (a preset's model page or reference code, with its commit).
    source: str | None = None
    # The pieces a published reranker's code tokenises one by one (each without special tokens, then concatenated;
    # relscope.prompts.tokenize): their concatenation is the user text. Empty: the whole prompt in one call.
    units: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Every slot is in the user text, and the parts (when given) are the user text in the default layout."""
        if self.parts and "\n".join(text for _, text in self.parts) != self.user and self.layout == DEFAULT_LAYOUT:
            raise ConfigError(f"template {self.name!r}: its parts do not make up its user text")
        for slot in self.document_slots + ("query",):
            if "{" + slot + "}" not in self.user:
                raise ConfigError(f"template {self.name!r}: user text must contain the slot {{{slot}}}")
        if self.units and ("".join(self.units) != self.user or self.chat or self.system or self.plain_suffix
                           or self.append_eos):
            raise ConfigError(f"template {self.name!r}: its units must make up its user text, a plain prompt "
                              "(chat: false) with no system text, suffix or appended EOS")
        if self.answer_rule not in ("auto", "bare"):
            raise ConfigError(f"template {self.name!r}: answer_rule must be auto or bare, got {self.answer_rule!r}")

    @property
    def document_slots(self) -> tuple[str, ...]:
        """The passage slots the user text must contain: one for pointwise, A and B for pairwise."""
        return ("document",) if self.kind == "pointwise" else ("document_a", "document_b")

    def with_layout(self, layout: str) -> PromptTemplate:
        """This template with its parts in `layout`'s order (the part a template lacks, e.g. an instruction, is
        left out); a template written as one text has only its own layout."""
        if layout == self.layout:
            return self
        if layout not in LAYOUTS:
            raise ConfigError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        if not self.parts:
            raise ConfigError(f"template {self.name!r} is one text, not parts: it has no layout but {self.layout}")
        texts = dict(self.parts)
        user = "\n".join(texts[part] for part in layout.split("-") if part in texts)
        return replace(self, user=user, layout=layout)

    def fingerprint(self) -> str:
        """A stable hash recorded in every manifest: same hash, same prompts. Fields added after the first release
        count only when they differ from their default, so the hashes of earlier runs' templates stay the same."""
        fields = asdict(self)
        del fields["source"]  # documentation, not the prompt
        for key, default in _LATER_FIELDS.items():
            if fields[key] == default:
                del fields[key]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


_LATER_FIELDS = {"answer_rule": "auto", "units": ()}


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


# -- the published rerankers' own prompts (relscope.prompts.presets maps model ids to them) ---------------------------
# Each is the reference code's text exactly, written out as one plain text (chat markup included as text, so no chat
# template of the tokenizer can change it); {query} and {document} are the only slots. `units` are the pieces the
# reference tokenises one by one; the tokenizer adds what its own special-token rule adds around them (Gemma's <bos>,
# Llama's <s>; nothing for Qwen). docs/notes/reranker-presets.md has the sources in full.

QWEN3_RERANKER_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
                "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
QWEN3_PAIR = f"<Instruct>: {QWEN3_RERANKER_INSTRUCTION}\n<Query>: {{query}}\n<Document>: {{document}}"
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
TEMPLATES.register(
    "qwen3-reranker",
    PromptTemplate(
        name="qwen3-reranker",
        kind="pointwise",
        user=QWEN3_PREFIX + QWEN3_PAIR + QWEN3_SUFFIX,
        units=(QWEN3_PREFIX, QWEN3_PAIR, QWEN3_SUFFIX),
        answers=("yes", "no"), chat=False, plain_suffix="", answer_rule="bare", layout="instruction-query-document",
        source="https://huggingface.co/Qwen/Qwen3-Reranker-0.6B (github.com/QwenLM/Qwen3-Embedding @ f4ad0c43, "
               "README, Transformers usage: format_instruction, prefix, suffix, compute_logits)",
    ),
)

BGE_GEMMA_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by "
                    "providing a prediction of either 'Yes' or 'No'.")
TEMPLATES.register(
    "bge-reranker-v2-gemma",
    PromptTemplate(
        name="bge-reranker-v2-gemma",
        kind="pointwise",
        user=f"A: {{query}}\nB: {{document}}\n{BGE_GEMMA_PROMPT}",
        units=("A: {query}", "\n", "B: {document}", "\n", BGE_GEMMA_PROMPT),
        answers=("Yes", "No"), chat=False, plain_suffix="", answer_rule="bare", layout="query-document-instruction",
        source="https://huggingface.co/BAAI/bge-reranker-v2-gemma (github.com/FlagOpen/FlagEmbedding @ 637f8628, "
               "research/llm_reranker/README.md: get_inputs, yes_loc)",
    ),
)

MXBAI_PREFIX = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n")
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK_PROMPT = ("You are a search relevance expert who evaluates how well documents match search queries. For "
                     "each query-document pair, carefully analyze the semantic relationship between them, then provide "
                     "your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
TEMPLATES.register(
    "mxbai-rerank-v2",
    PromptTemplate(
        name="mxbai-rerank-v2",
        kind="pointwise",
        user=f"{MXBAI_PREFIX}query: {{query}}\ndocument: {{document}}\n{MXBAI_TASK_PROMPT}{MXBAI_SUFFIX}",
        units=(MXBAI_PREFIX, "query: {query}", "\n", "document: {document}", "\n", MXBAI_TASK_PROMPT, MXBAI_SUFFIX),
        answers=("1", "0"), chat=False, plain_suffix="", answer_rule="bare", layout="query-document-instruction",
        source="https://huggingface.co/mixedbread-ai/mxbai-rerank-base-v2 (github.com/mixedbread-ai/mxbai-rerank "
               "@ 93a0be81, mxbai_rerank/mxbai_rerank_v2.py: chat_template, task_prompt, yes_loc/no_loc)",
    ),
)

# RankLLaMA scores tokenizer(f"query: {q}", f"document: {title} {p}"): Llama-2's pair template puts a BOS before each
# text, each text tokenised alone (so SentencePiece marks each one's first word as word-initial), and MS MARCO
# passages have no title, hence two spaces after "document:".
TEMPLATES.register(
    "rankllama",
    PromptTemplate(
        name="rankllama",
        kind="pointwise",
        user="query: {query}<s>document:  {document}",
        units=("query: {query}", "<s>", "document:  {document}"),
        answers=None, chat=False, plain_suffix="", layout="query-document-instruction",
        source="https://huggingface.co/castorini/rankllama-v1-7b-lora-passage (model card usage; "
               "github.com/texttron/tevatron @ 7d38ef5d, examples/rankllama)",
    ),
)


def get_template(name: str, layout: str | None = None) -> PromptTemplate:
    """The registered template `name` in `layout` (None: its own); a ConfigError lists the known ones otherwise."""
    template = TEMPLATES.get(name)
    return template if layout is None else template.with_layout(layout)
