"""Fast scoring paths equal the naive computation."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, tiny_loaded

from relscope.models.heads import build_head
from relscope.models.scoring import Scorer, ScoringOptions
from relscope.prompts import PromptBuilder, get_template

PASSAGES = [
    "Paris is the capital and largest city of France.",
    "Bananas are yellow.",
    "The quick brown fox jumps over the lazy dog while bananas ripen in tropical climates.",
    "Rivers flow to the sea.",
    "Mountains rise above the clouds; numbers 0123456789 and punctuation!",
]


def setup(family: str, template: str = "yes_no", head: str = "yes_no"):
    loaded = tiny_loaded(family)
    builder = PromptBuilder(loaded.tokenizer, get_template(template))
    head_module = build_head(head, loaded.model, builder)
    return loaded, builder, head_module


def scorer(loaded, head, **options):
    return Scorer(loaded.model, loaded.spec, head, loaded.tokenizer.pad_token_id, ScoringOptions(**options),
                  progress=False)


def naive_scores(loaded, builder, prompts):
    """One unpadded full forward per prompt, full logits, difference of the answer logits."""
    yes, no = builder.answer_ids
    out = []
    with torch.no_grad():
        for p in prompts:
            logits = loaded.model(input_ids=torch.tensor([p.input_ids])).logits[0, -1]
            out.append((logits[yes] - logits[no]).item())
    return torch.tensor(out)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("options", [
    dict(prefix_cache=False),
    dict(prefix_cache=False, padding_side="left"),
    dict(prefix_cache=True, min_prefix=1),
    dict(prefix_cache=True, min_prefix=1, max_batch_size=2),
])
def test_batched_scores_equal_unpadded_single_example_scores(family, options):
    loaded, builder, head = setup(family)
    prompts = [builder.build("what is the capital of france", [p]) for p in PASSAGES]
    expected = naive_scores(loaded, builder, prompts)
    got = scorer(loaded, head, **options).score(prompts, ["q"] * len(prompts))
    torch.testing.assert_close(torch.tensor(got), expected, rtol=0, atol=1e-5)


def test_prefix_cache_is_per_group_and_plain_fallback_is_used_for_singletons():
    loaded, builder, head = setup("llama")
    prompts = [builder.build(q, [p]) for q in ("capital of france", "yellow bananas") for p in PASSAGES[:3]]
    prompts.append(builder.build("lonely query", [PASSAGES[0]]))
    groups = ["a"] * 3 + ["b"] * 3 + ["c"]
    got = scorer(loaded, head, min_prefix=1).score(prompts, groups)
    torch.testing.assert_close(torch.tensor(got), naive_scores(loaded, builder, prompts), rtol=0, atol=1e-5)


def test_pairwise_head_is_the_a_minus_b_logit():
    loaded, builder, head = setup("qwen2", "pairwise", "ab")
    prompts = [builder.build("capital of france", [PASSAGES[0], PASSAGES[1]]),
               builder.build("capital of france", [PASSAGES[1], PASSAGES[0]])]
    got = scorer(loaded, head, min_prefix=1).score(prompts, ["q", "q"])
    torch.testing.assert_close(torch.tensor(got), naive_scores(loaded, builder, prompts), rtol=0, atol=1e-5)


def test_linear_head_reads_the_last_hidden_state():
    loaded, builder, head = setup("llama", "score", "linear")
    prompt = builder.build("capital of france", [PASSAGES[0]])
    got = scorer(loaded, head).score([prompt])
    with torch.no_grad():
        hidden = loaded.model(input_ids=torch.tensor([prompt.input_ids]), output_hidden_states=True).hidden_states[-1]
        expected = head(hidden[:, -1])
    torch.testing.assert_close(torch.tensor(got), expected, rtol=0, atol=1e-6)


def test_batches_respect_the_token_budget():
    loaded, builder, head = setup("llama")
    s = scorer(loaded, head, max_batch_tokens=100, max_batch_size=8)
    batches = s._batches(list(range(6)), [10, 30, 20, 40, 50, 10])
    assert all(len(b) * max([10, 30, 20, 40, 50, 10][i] for i in b) <= 100 for b in batches if len(b) > 1)
    assert sorted(i for b in batches for i in b) == list(range(6))
