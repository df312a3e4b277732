"""The tokenisation contract: spans partition the prompt, truncation cuts passages only."""

from __future__ import annotations

import pytest
from tiny import tiny_tokenizer

from relscope.errors import ConfigError
from relscope.prompts import POSITION_GROUPS, PromptBuilder, get_template

QUERY = "what is the capital of france"
PASSAGE = "Paris is the capital and largest city of France."


def decode(tokenizer, prompt, group, index=None):
    ids = [prompt.input_ids[p] for s in prompt.spans if s.group == group and (index is None or s.index == index)
           for p in range(s.start, s.end)]
    return tokenizer.decode(ids)


@pytest.mark.parametrize("chat", [True, False])
def test_spans_partition_the_prompt_and_hold_their_text(chat):
    tok = tiny_tokenizer(chat)
    prompt = PromptBuilder(tok, get_template("yes_no")).build(QUERY, [PASSAGE])
    covered = [p for s in prompt.spans for p in range(s.start, s.end)]
    assert covered == list(range(len(prompt)))
    assert {s.group for s in prompt.spans} == set(POSITION_GROUPS)
    assert decode(tok, prompt, "query").strip() == QUERY
    assert decode(tok, prompt, "document").strip() == PASSAGE
    assert prompt.positions("last") == [len(prompt) - 1]
    assert tok.decode(prompt.input_ids) == PromptBuilder(tok, get_template("yes_no")).render(QUERY, [PASSAGE])[0]


def test_golden_chat_prompt_for_the_tiny_tokenizer():
    tok = tiny_tokenizer(chat=True)
    prompt = PromptBuilder(tok, get_template("yes_no")).build("capital", ["Paris"])
    text = tok.decode(prompt.input_ids)
    assert text == (
        "<|im_start|>system\nYou judge whether a passage answers a search query.<|im_end|>\n"
        "<|im_start|>user\nQuery: capital\nPassage: Paris\nDoes the passage answer the query? "
        "Answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
    )
    # Pinned: a change to templates, rendering or span assignment must show up here.
    assert list(prompt.input_ids) == [
        1, 85, 377, 351, 201, 342, 309, 371, 292, 388, 287, 323, 319, 85, 287, 324, 277, 347, 326, 16, 2, 201,
        1, 373, 201, 338, 273, 28, 329, 201, 50, 296, 28, 307, 399, 201, 336, 282, 263, 323, 319, 263, 326, 33,
        322, 386, 317, 312, 81, 16, 2, 201, 1, 274, 392, 201,
    ]
    assert [(s.group, s.start, s.end) for s in prompt.spans] == [
        ("instruction", 0, 28), ("query", 28, 29), ("instruction", 29, 33),
        ("document", 33, 35), ("instruction", 35, 55), ("last", 55, 56),
    ]


def test_pairwise_prompt_has_two_documents():
    tok = tiny_tokenizer()
    builder = PromptBuilder(tok, get_template("pairwise"))
    prompt = builder.build(QUERY, ["first passage", "second passage"])
    assert decode(tok, prompt, "document", 0).strip() == "first passage"
    assert decode(tok, prompt, "document", 1).strip() == "second passage"
    a, b = builder.answer_ids
    assert tok.decode([a]).strip() == "A" and tok.decode([b]).strip() == "B"


def test_score_template_ends_on_eos_without_chat():
    tok = tiny_tokenizer()
    prompt = PromptBuilder(tok, get_template("score")).build(QUERY, [PASSAGE])
    assert prompt.input_ids[-1] == tok.eos_token_id
    assert decode(tok, prompt, "document").strip() == PASSAGE


@pytest.mark.parametrize("template", ["yes_no", "pairwise", "score"])
def test_truncation_cuts_passages_only(template):
    tok = tiny_tokenizer()
    long_passage = " ".join(["mountains rise above the clouds"] * 60)
    builder = PromptBuilder(tok, get_template(template), max_length=96)
    n_docs = len(get_template(template).document_slots)
    full = PromptBuilder(tok, get_template(template), max_length=4096).build(QUERY, [long_passage] * n_docs)
    prompt = builder.build(QUERY, [long_passage] * n_docs)
    assert len(prompt) <= 96 and prompt.truncated_tokens == len(full) - len(prompt) > 0
    assert decode(tok, prompt, "query") == decode(tok, full, "query")
    kept = decode(tok, prompt, "document")
    assert kept.strip() and long_passage.startswith(kept.strip().split(" mountains")[0])
    instruction = [prompt.input_ids[p] for p in prompt.positions("instruction")]
    assert instruction == [full.input_ids[p] for p in full.positions("instruction")]


def test_pairwise_truncation_shortens_the_longer_passage_first():
    tok = tiny_tokenizer()
    builder = PromptBuilder(tok, get_template("pairwise"), max_length=110)
    prompt = builder.build(QUERY, ["short passage", " ".join(["rivers flow to the sea"] * 40)])
    assert decode(tok, prompt, "document", 0).strip() == "short passage"
    assert len(prompt) <= 110


def test_query_that_cannot_fit_is_an_error_not_a_cut():
    tok = tiny_tokenizer()
    builder = PromptBuilder(tok, get_template("yes_no"), max_length=40)
    with pytest.raises(ConfigError, match="instruction and query alone take"):
        builder.build(" ".join(["capital"] * 50), [PASSAGE])


def test_answer_words_read_as_the_model_would_emit_them(caplog):
    tok = tiny_tokenizer()
    yes, no = PromptBuilder(tok, get_template("yes_no")).answer_ids
    assert tok.decode([yes]) == "yes"  # no leading space: the chat template ends on a newline
    # "no" is two tokens in the tiny vocabulary: its first token is read, and a warning says so
    assert tok.decode([no]) == "n"
    assert "'no' is 2 tokens" in caplog.text


LAYOUTS = ["query-document-instruction", "document-query-instruction", "instruction-document-query"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("template", ["yes_no", "pairwise", "score"])
def test_every_layout_keeps_the_contract(template, layout):
    """Spans partition the prompt in the layout's order, hold their text, and truncation still cuts passages only."""
    tok = tiny_tokenizer()
    chosen = get_template(template, layout)
    n_docs = len(chosen.document_slots)
    passages = ["first passage", "second passage"][:n_docs]
    prompt = PromptBuilder(tok, chosen).build(QUERY, passages)
    assert [p for s in prompt.spans for p in range(s.start, s.end)] == list(range(len(prompt)))
    assert decode(tok, prompt, "query").strip() == QUERY
    assert [decode(tok, prompt, "document", i).strip() for i in range(n_docs)] == passages
    first = {g: min(prompt.positions(g)) for g in ("query", "document")}
    assert (first["document"] < first["query"]) == (layout != "query-document-instruction")
    long_passage = " ".join(["mountains rise above the clouds"] * 60)
    full = PromptBuilder(tok, chosen, max_length=4096).build(QUERY, [long_passage] * n_docs)
    cut = PromptBuilder(tok, chosen, max_length=96).build(QUERY, [long_passage] * n_docs)
    assert len(cut) <= 96 < len(full) and decode(tok, cut, "query") == decode(tok, full, "query")
    assert [cut.input_ids[p] for p in cut.positions("instruction")] == \
        [full.input_ids[p] for p in full.positions("instruction")]


def test_golden_document_first_prompt_for_the_tiny_tokenizer():
    """Study 002's order: the passage, then the query, then the question; pinned as text and span order."""
    tok = tiny_tokenizer(chat=True)
    prompt = PromptBuilder(tok, get_template("yes_no", "document-query-instruction")).build("capital", ["Paris"])
    assert tok.decode(prompt.input_ids) == (
        "<|im_start|>system\nYou judge whether a passage answers a search query.<|im_end|>\n"
        "<|im_start|>user\nPassage: Paris\nQuery: capital\nDoes the passage answer the query? "
        "Answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert [s.group for s in prompt.spans] == ["instruction", "document", "instruction", "query", "instruction",
                                               "last"]


def test_the_default_layout_renders_the_templates_as_before():
    for name in ("yes_no", "pairwise", "score"):
        template = get_template(name)
        assert template.layout == "query-document-instruction" and template.user == "\n".join(
            text for _, text in template.parts)
    with pytest.raises(ConfigError, match="layout 'sideways'"):
        get_template("yes_no", "sideways")
