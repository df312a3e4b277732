"""The tokenisation contract.

A prompt is rendered once with placeholders (through the chat template when the
model has one), split into literal pieces and slots, and filled per example. The
full text is tokenised in one call, so tokens are the model's natural ones, and
each token is assigned to a position group by the character it ends on:

    instruction  every piece of template text (system prompt, chat markup, labels)
    query        the query text
    document     the passage text (documents A and B in pairwise prompts)
    last         the final token, where the score is read

Truncation shortens passages only: never the query or the instruction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from relscope.errors import ConfigError, ModelError
from relscope.prompts.templates import PromptTemplate

log = logging.getLogger(__name__)

INSTRUCTION, QUERY, DOCUMENT, LAST = "instruction", "query", "document", "last"
POSITION_GROUPS = (INSTRUCTION, QUERY, DOCUMENT, LAST)
_GROUP_INDEX = {g: i for i, g in enumerate(POSITION_GROUPS)}
_SLOT_MARK = "\ue000{}\ue001"  # private-use characters: never in real text, never merged by a chat template
_MAX_TRUNCATION_ROUNDS = 12


@dataclass(frozen=True)
class Span:
    """Tokens [start, end) of one segment. `index` tells documents A (0) and B (1) apart."""

    group: str
    start: int
    end: int
    index: int = 0


@dataclass(frozen=True)
class TokenizedPrompt:
    input_ids: tuple[int, ...]
    spans: tuple[Span, ...]
    truncated_tokens: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def positions(self, group: str) -> list[int]:
        """Token positions of a position group ("all" for every position)."""
        if group == "all":
            return list(range(len(self.input_ids)))
        return [p for s in self.spans if s.group == group for p in range(s.start, s.end)]

    def group_ids(self) -> np.ndarray:
        """(seq,) index into POSITION_GROUPS for every token."""
        ids = np.empty(len(self.input_ids), dtype=np.int64)
        for s in self.spans:
            ids[s.start : s.end] = _GROUP_INDEX[s.group]
        return ids


class PromptBuilder:
    """Builds TokenizedPrompts for one tokenizer and template."""

    def __init__(self, tokenizer, template: PromptTemplate, max_length: int = 512) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; relscope needs character offsets. "
                "Load the model's tokenizer with use_fast=True"
            )
        if max_length < 8:
            raise ConfigError(f"max_length must be at least 8 tokens, got {max_length}")
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.uses_chat = bool(template.chat and getattr(tokenizer, "chat_template", None))
        self._pieces = self._skeleton()

    # -- rendering -------------------------------------------------------------------------

    def _skeleton(self) -> list[tuple[str, str]]:
        """[(kind, text)]: kind "literal" with its text, or a slot name with ""."""
        slots = ("query",) + self.template.document_slots
        filled = self.template.user.format(**{s: _SLOT_MARK.format(s) for s in slots})
        rendered = self._wrap(filled)
        pieces: list[tuple[str, str]] = []
        rest = rendered
        for slot in sorted(slots, key=lambda s: rendered.index(_SLOT_MARK.format(s))):
            mark = _SLOT_MARK.format(slot)
            if rest.count(mark) != 1:
                raise ModelError(f"the chat template repeats or drops the {slot} slot; use chat: false")
            before, rest = rest.split(mark)
            pieces += [("literal", before), (slot, "")]
        pieces.append(("literal", rest))
        return pieces

    def _wrap(self, user_text: str) -> str:
        t = self.template
        if not self.uses_chat:
            head = f"{t.system}\n\n" if t.system else ""
            tail = t.plain_suffix + (self.tokenizer.eos_token or "" if t.append_eos else "")
            return head + user_text + tail
        messages = [{"role": "user", "content": user_text}]
        if t.system:
            messages.insert(0, {"role": "system", "content": t.system})
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # some chat templates reject a system turn: fold it into the user turn
            merged = [{"role": "user", "content": f"{t.system}\n\n{user_text}" if t.system else user_text}]
            text = self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return text + (self.tokenizer.eos_token or "" if t.append_eos else "")

    def pieces(self) -> list[tuple[str, str]]:
        """The rendered prompt as [(kind, text)]: kind "literal" with its text, or a slot name ("query",
        "document", ...) with "" (an export writes the prompt with its slots from these)."""
        return list(self._pieces)

    def render(self, query: str, documents: Sequence[str]) -> tuple[str, list[tuple[str, int, int, int]]]:
        """The prompt text and its character segments [(group, start, end, doc index)]."""
        slots = self.template.document_slots
        if len(documents) != len(slots):
            raise ConfigError(f"template {self.template.name!r} takes {len(slots)} document(s), got {len(documents)}")
        values = {"query": query, **dict(zip(slots, documents))}
        text, segments = "", []
        for kind, literal in self._pieces:
            value = literal if kind == "literal" else values[kind]
            group = INSTRUCTION if kind == "literal" else (QUERY if kind == "query" else DOCUMENT)
            index = slots.index(kind) if kind in slots else 0
            segments.append((group, len(text), len(text) + len(value), index))
            text += value
        return text, segments

    # -- tokenisation ----------------------------------------------------------------------

    def build(self, query: str, documents: Sequence[str]) -> TokenizedPrompt:
        """Tokenise, truncating the passages (never the query or instruction) to max_length."""
        query = " ".join(query.split())
        docs = [" ".join(d.split()) for d in documents]
        enc = self._tokenize(query, docs)
        original = len(enc.ids)
        for _ in range(_MAX_TRUNCATION_ROUNDS):
            excess = len(enc.ids) - self.max_length
            if excess <= 0:
                return TokenizedPrompt(tuple(enc.ids), tuple(enc.spans), original - len(enc.ids))
            docs = self._shorten(docs, enc, excess)
            enc = self._tokenize(query, docs)
        raise ModelError(f"could not truncate the passage to fit max_length={self.max_length}")

    def _tokenize(self, query: str, docs: list[str]) -> _Encoding:
        text, segments = self.render(query, docs)
        if self.template.units:
            ids, offsets = self._tokenize_units(text, query, docs)
        else:
            enc = self.tokenizer(
                text, add_special_tokens=not self.uses_chat, return_offsets_mapping=True, return_attention_mask=False
            )
            ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        owner = np.full(len(text) + 1, -1, dtype=np.int64)  # char -> segment number
        for k, (_, start, end, _) in enumerate(segments):
            owner[start:end] = k
        labels = []
        for start, end in offsets:
            k = owner[end - 1] if end > start else -1  # a token belongs to the segment of its last char
            labels.append((INSTRUCTION, 0) if k < 0 else (segments[k][0], segments[k][3]))
        labels[-1] = (LAST, 0)
        return _Encoding(ids, _runs(labels), offsets, segments)

    def _tokenize_units(self, text: str, query: str, docs: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
        """A published reranker's prompt tokenised as its reference code does: each unit alone (a tokenizer may
        merge across a unit boundary what the reference never lets it, e.g. Qwen's ".\n"), then concatenated, with
        the special tokens the tokenizer adds to a text (a BOS) around the whole; offsets in the full text."""
        values = {"query": query, **dict(zip(self.template.document_slots, docs))}
        units = [unit.format(**values) for unit in self.template.units]
        if "".join(units) != text:
            raise ModelError(f"template {self.template.name!r}: its units do not make up its prompt")
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        start = 0
        for unit in units:
            enc = self.tokenizer(unit, add_special_tokens=False, return_offsets_mapping=True,
                                 return_attention_mask=False)
            ids += enc["input_ids"]
            offsets += [(a + start, b + start) for a, b in enc["offset_mapping"]]
            start += len(unit)
        before, after = self.special_affix_ids()
        return before + ids + after, [(0, 0)] * len(before) + offsets + [(len(text), len(text))] * len(after)

    @cached_property
    def _affixes(self) -> tuple[list[int], list[int]]:
        bare = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        start = next((i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), 0)
        return full[:start], full[start + len(bare):]

    def special_affix_ids(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer adds before and after a text (a BOS, an EOS) when relscope tokenises
        with them (plain prompts; a chat prompt holds its markup in its text): ([], []) when none."""
        return ([], []) if self.uses_chat else (list(self._affixes[0]), list(self._affixes[1]))

    def _shorten(self, docs: list[str], enc: _Encoding, excess: int) -> list[str]:
        """Cut passages at token boundaries so that `excess` tokens go, longest passage first."""
        positions = [[p for s in enc.spans if s.group == DOCUMENT and s.index == i for p in range(s.start, s.end)]
                     for i in range(len(docs))]
        counts = [len(p) for p in positions]
        if sum(counts) == 0:
            raise ConfigError(
                f"the instruction and query alone take {len(enc.ids)} tokens, more than max_length="
                f"{self.max_length}; raise max_length or shorten the query"
            )
        keep = _water_fill(counts, max(sum(counts) - excess, 0))
        shortened = []
        for i, doc in enumerate(docs):
            if keep[i] >= counts[i]:
                shortened.append(doc)
                continue
            doc_start = next(s for g, s, _, j in enc.segments if g == DOCUMENT and j == i)
            cut = enc.offsets[positions[i][keep[i] - 1]][1] - doc_start if keep[i] > 0 else 0
            shortened.append(doc[: max(0, min(cut, len(doc) - 1))].rstrip())
        return shortened

    # -- answers ---------------------------------------------------------------------------

    @cached_property
    def answer_ids(self) -> tuple[int, int]:
        """Token ids of the two answer words as the model would emit them after this prompt.

        A plain prompt (no chat template) ending in text ("...\nAnswer:") is answered " yes": the model writes
        the space with the word, so the space-led token is read. A chat prompt is answered by the assistant turn,
        which starts bare whatever its opening ends in (a newline, or a special token such as Phi-4's
        `<|im_sep|>`): the bare word.
        """
        if self.template.answers is None:
            raise ConfigError(f"template {self.template.name!r} has no answer words; use a linear score head")
        if self.template.answer_rule == "bare":  # the published reranker's own rule (its template says so)
            ids = [self._bare_token(word) for word in self.template.answers]
        else:
            text, _ = self.render("q", ["d"] * len(self.template.document_slots))
            ids = [self._answer_token(text, word) for word in self.template.answers]
        if ids[0] == ids[1]:
            raise ConfigError(f"answers {self.template.answers} map to the same token; choose distinct words")
        return ids[0], ids[1]

    def _bare_token(self, word: str) -> int:
        """The first token of `word` tokenised alone, without special tokens."""
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) > 1:
            log.warning("answer %r is %d tokens for this tokenizer; its first token is read", word, len(ids))
        return ids[0]

    def _answer_token(self, text: str, word: str) -> int:
        """The first token of `word` as written after `text`: with a leading space unless text ends in one."""
        if self.uses_chat or not text or text[-1].isspace() or word[:1].isspace():
            return self._first_token_after(text, word)
        spaced = self._tokens_after(text, " " + word)
        if len(spaced) == 1:
            return spaced[0]
        if not self.tokenizer.decode(spaced[:1]).strip():
            # this tokenizer writes the space as its own token: reading it would not tell the answers apart
            log.warning("answer %r: this tokenizer splits off the leading space; the bare word's token is read",
                        word)
            return self._first_token_after(text, word)
        log.warning("answer %r is %d tokens for this tokenizer; its first token is read", " " + word, len(spaced))
        return spaced[0]

    def _first_token_after(self, text: str, word: str) -> int:
        new = self._tokens_after(text, word)
        if len(new) > 1:
            log.warning("answer %r is %d tokens for this tokenizer; its first token is read", word, len(new))
        return new[0]

    def _tokens_after(self, text: str, word: str) -> list[int]:
        """The tokens `word` adds after `text` when both are tokenised as one text (the model's view)."""
        kwargs = {"add_special_tokens": not self.uses_chat}
        prompt_ids = self.tokenizer(text, **kwargs)["input_ids"]
        full_ids = self.tokenizer(text + word, **kwargs)["input_ids"]
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            return list(full_ids[len(prompt_ids):])
        return list(self.tokenizer(word, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class _Encoding:
    ids: list[int]
    spans: list[Span]
    offsets: list[tuple[int, int]]
    segments: list[tuple[str, int, int, int]]


def _runs(labels: list[tuple[str, int]]) -> list[Span]:
    """Contiguous runs of equal (group, index) labels as Spans."""
    spans: list[Span] = []
    for pos, (group, index) in enumerate(labels):
        if spans and spans[-1].group == group and spans[-1].index == index and spans[-1].end == pos:
            spans[-1] = Span(group, spans[-1].start, pos + 1, index)
        else:
            spans.append(Span(group, pos, pos + 1, index))
    return spans


def _water_fill(counts: list[int], budget: int) -> list[int]:
    """Largest cap c with sum(min(n, c)) <= budget: shortens the longest passages first."""
    cap = max(counts)
    while cap > 0 and sum(min(n, cap) for n in counts) > budget:
        cap -= 1
    return [min(n, cap) for n in counts]
