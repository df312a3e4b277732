"""Property tests: arbitrary input never crashes a reader or the prompt builder except with a relscope error,
and truncation never touches the query or the instruction."""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import tiny_tokenizer

from relscope.data.groups import read_groups
from relscope.data.msmarco import read_texts
from relscope.data.trec import read_qrels, read_run
from relscope.errors import RelscopeError
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
WORDS = st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, blacklist_categories=("Cs",)),
                         min_size=1, max_size=12), min_size=1, max_size=60).map(" ".join)


@functools.lru_cache(maxsize=None)
def _builder(template: str, max_length: int) -> PromptBuilder:
    return PromptBuilder(tiny_tokenizer(), get_template(template), max_length)


@SETTINGS
@given(content=st.binary(max_size=400))
def test_readers_accept_or_reject_any_bytes_with_a_relscope_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("bytes") / "file.txt"
    path.write_bytes(content)
    for reader in (read_qrels, read_run, lambda p: read_texts(p, "passage"), read_groups):
        try:
            reader(path)
        except RelscopeError:
            pass


@SETTINGS
@given(query=WORDS, passage=WORDS, template=st.sampled_from(["yes_no", "score"]))
def test_truncation_cuts_the_passage_never_the_query(query, passage, template):
    short, long = _builder(template, 48), _builder(template, 4096)
    try:
        cut = short.build(query, [passage])
    except RelscopeError:  # the instruction and query alone do not fit: a clear error, not a crash
        return
    full = long.build(query, [passage])
    assert len(cut) <= 48
    assert cut.positions("query") == full.positions("query")  # same query tokens at the same places
    assert [cut.input_ids[i] for i in cut.positions("query")] == [full.input_ids[i] for i in full.positions("query")]
    assert cut.truncated_tokens == 0 or len(cut.positions("document")) < len(full.positions("document"))


@SETTINGS
@given(query=TEXT, passage=TEXT)
def test_any_text_builds_or_fails_cleanly(query, passage):
    try:
        prompt = _builder("yes_no", 128).build(query, [passage])
    except RelscopeError:
        return
    assert 0 < len(prompt) <= 128
    assert prompt.positions("last") == [len(prompt) - 1]


# Lines that look almost right: the layout's column count, each field drawn from values a hand-edited or
# mis-converted file holds (numbers in odd forms, non-finite values, empty strings, JSON fragments, other columns).
FIELD = st.one_of(
    st.sampled_from(["1", "0", "-1", "2.5", "1e400", "nan", "inf", "-inf", "Q0", "", "null", "{}", "[]", "\"x\"",
                     "99999999999999999999", "0x10", "１", "3\u00a0"]),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats().map(repr),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=12),
)
LAYOUTS = {read_qrels: (4, " "), read_run: (6, " "), (lambda p: read_texts(p, "passage")): (2, "\t")}


@SETTINGS
@given(data=st.data())
def test_almost_right_lines_are_read_or_refused_with_a_relscope_error(tmp_path_factory, data):
    """Each reader, fed lines of its own column count with hostile field values, either reads them (into finite
    numbers) or refuses with one relscope error: never another exception."""
    import math

    folder = tmp_path_factory.mktemp("lines")
    for reader, (columns, sep) in LAYOUTS.items():
        rows = data.draw(st.lists(st.lists(FIELD, min_size=columns, max_size=columns), min_size=1, max_size=5))
        path = folder / "file.txt"
        path.write_text("".join(sep.join(row) + "\n" for row in rows), encoding="utf-8")
        try:
            read = reader(path)
        except RelscopeError:
            continue
        if reader is read_run:
            assert all(math.isfinite(d.score) for docs in read.values() for d in docs)


@SETTINGS
@given(records=st.lists(st.dictionaries(st.sampled_from(["query_id", "query", "positive_passages",
                                                         "negative_passages", "text", "docid", "kind"]),
                                        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                                     lambda inner: st.lists(inner, max_size=3)
                                                     | st.dictionaries(st.sampled_from(["text", "docid", "kind"]),
                                                                       inner, max_size=3), max_leaves=8)),
                        min_size=1, max_size=4))
def test_almost_right_group_lines_are_read_or_refused_with_a_relscope_error(tmp_path_factory, records):
    """Group jsonl lines with the right keys holding the wrong kinds of values."""
    import json

    path = tmp_path_factory.mktemp("groups") / "groups.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    try:
        read_groups(path)
    except RelscopeError:
        pass
