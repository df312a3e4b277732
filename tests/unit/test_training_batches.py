"""What a training step feeds the model: the collator's graded targets, and length-sorted chunks and padding to a
multiple that change no score or gradient."""

from __future__ import annotations

import random

import pytest
import torch
from tiny import tiny_loaded

from relscope.data import ScoredDoc
from relscope.data.training import build_groups
from relscope.models.heads import build_head
from relscope.models.lora import LoraSettings, apply_lora
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder
from relscope.training.data import Draw, GroupCollator, draw_passages
from relscope.training.module import RerankerModule, length_chunks
from relscope.training.objectives import OBJECTIVES

QUERIES = {"1": "capital of france", "2": "yellow bananas"}
PASSAGES = {f"p{i}": " ".join(["word"] * (3 + 5 * i)) + f" passage {i}" for i in range(12)}  # lengths differ
QRELS = {"1": {"p0": 3, "p1": 2, "p2": 1, "p3": 0, "p4": 0}, "2": {"p5": 2, "p6": 1, "p7": 0}}
RUN = {"1": [ScoredDoc(p, 10 - i) for i, p in enumerate(["p3", "p0", "p8", "p2", "p9"])]}


def _module(chunk_rows: int) -> tuple[RerankerModule, PromptBuilder, int]:
    loaded = tiny_loaded("llama")
    loaded.model.float()
    builder = PromptBuilder(loaded.tokenizer, get_template("score"), 96)
    torch.manual_seed(0)
    peft_model, _ = apply_lora(loaded.model, loaded.spec, LoraSettings(rank=4, dropout=0.0))
    for name, param in peft_model.named_parameters():  # B starts at zero: make the adapters do something
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    head = build_head("linear", peft_model, builder)
    return RerankerModule(peft_model, loaded.spec, head, chunk_rows), builder, loaded.tokenizer.pad_token_id


def test_the_collator_gives_each_prompt_the_grade_of_its_passage():
    groups, _ = build_groups(QUERIES, QRELS, PASSAGES, RUN, negatives=3, seed=1, graded=True)
    loaded = tiny_loaded("llama")
    builder = PromptBuilder(loaded.tokenizer, get_template("score"), 96)
    objective = OBJECTIVES.get("graded_listwise")
    collate = GroupCollator(groups, objective, builder, 3, loaded.tokenizer.pad_token_id, seed=7)
    draws = [Draw(i, 2) for i in range(len(groups))]
    batch = collate(draws)
    text_grade = {PASSAGES[pid]: grade for judged in QRELS.values() for pid, grade in judged.items()}
    for row, (index, epoch) in enumerate(draws):  # the same draw again, as texts: each text's judged grade
        first, chosen = draw_passages(groups[index], 3, 1.0, random.Random(f"7:{epoch}:{index}"))
        positive, negatives = groups[index].positives[first], [n.text for n in chosen]
        assert batch["grades"][row].tolist() == [text_grade.get(t, 0) for t in [positive, *negatives]]
        assert batch["copies"][row].tolist() == [1.0] + [negatives.count(t) for t in negatives]
    short = GroupCollator([groups[-1]], objective, builder, 9, 0, seed=7)([Draw(0, 0)])  # 9 asked, fewer there
    distinct = len(groups[-1].negatives)  # each distinct negative's copies add up to one passage's weight
    assert (1 / short["copies"][0, 1:]).sum().item() == pytest.approx(distinct) and distinct < 9
    assert not {"grades", "copies"} & set(GroupCollator(groups, OBJECTIVES.get("listwise"), builder, 3, 0)(draws))


def test_draw_passages_draws_what_the_texts_only_draw_always_drew():
    groups, _ = build_groups(QUERIES, QRELS, PASSAGES, RUN, negatives=3, hard_fraction=0.67, seed=1)
    for group in groups:
        index, chosen = draw_passages(group, 3, 0.67, random.Random("a"))
        rng = random.Random("a")  # the texts-only draw, as the collator made it before grades
        positive = rng.choice(group.positives)
        hard = [n.text for n in group.negatives if n.kind == "hard"]
        other = [n.text for n in group.negatives if n.kind != "hard"]
        n_other = min(3 - min(2, len(hard)), len(other))
        texts = rng.sample(hard, min(3 - n_other, len(hard))) + rng.sample(other, n_other)
        assert (group.positives[index], [n.text for n in chosen]) == (positive, [texts[i % len(texts)]
                                                                                 for i in range(3)])


def test_length_chunks_sort_rows_and_cover_each_once():
    assert length_chunks([5, 1, 4, 2, 3], 2) == [[1, 3], [4, 2], [0]]
    assert length_chunks([5, 1, 4], 0) == [[0, 1, 2]]
    assert length_chunks([5, 1, 4], 3) == [[0, 1, 2]]


def test_chunked_forward_gives_the_scores_and_gradients_of_one_padded_batch():
    groups, _ = build_groups(QUERIES, QRELS, PASSAGES, RUN, negatives=3, seed=1)
    plain, builder, pad = _module(0)
    batch = GroupCollator(groups, OBJECTIVES.get("listwise"), builder, 3, pad)([Draw(i, 0) for i in range(3)])
    results = {}
    for rows in (0, 3):
        plain.chunk_rows = rows
        plain.zero_grad()
        scores = plain(batch["input_ids"], batch["attention_mask"], batch["last"])
        OBJECTIVES.get("listwise").loss(scores.view(-1, 4)).loss.backward()
        grads = {n: p.grad.clone() for n, p in plain.named_parameters() if p.grad is not None}
        results[rows] = scores.detach(), grads, plain.padded_tokens(batch["attention_mask"], batch["last"])
    (scores0, grads0, padded0), (scores3, grads3, padded3) = results[0], results[3]
    assert len(plain.chunks(batch["attention_mask"], batch["last"])) == 4  # 12 rows in chunks of 3
    torch.testing.assert_close(scores3, scores0, rtol=1e-5, atol=1e-5)
    assert grads3.keys() == grads0.keys() and len(grads0) > 2
    for name in grads0:
        torch.testing.assert_close(grads3[name], grads0[name], rtol=1e-4, atol=1e-6)
    lengths = sorted((batch["last"] + 1).tolist())
    assert padded0 == batch["input_ids"].numel()
    assert padded3 == sum(3 * lengths[i + 2] for i in range(0, 12, 3)) < padded0


def test_left_padded_rows_are_never_cut():
    module, builder, pad = _module(2)
    from relscope.models.scoring import pad_sequences

    prompts = [builder.build("q", [PASSAGES[f"p{i}"]]).input_ids for i in (0, 3, 6)]
    ids, mask, last = pad_sequences(prompts, pad, left=True)
    assert module.chunks(mask, last) == [[0, 1, 2]]
    assert module.padded_tokens(mask, last) == ids.numel()


def test_padding_to_a_multiple_changes_no_score_or_gradient():
    groups, _ = build_groups(QUERIES, QRELS, PASSAGES, RUN, negatives=3, seed=1)
    module, builder, pad = _module(0)
    draws = [Draw(i, 0) for i in range(3)]
    results = {}
    for multiple in (1, 40):  # the prompts are cut at 96 tokens: no multiple of 40
        batch = GroupCollator(groups, OBJECTIVES.get("listwise"), builder, 3, pad, pad_to_multiple_of=multiple)(draws)
        module.zero_grad()
        scores = module(batch["input_ids"], batch["attention_mask"], batch["last"])
        OBJECTIVES.get("listwise").loss(scores.view(-1, 4)).loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results[multiple] = batch, scores.detach(), grads
    (plain, scores1, grads1), (rounded, scores40, grads40) = results[1], results[40]
    width, wider = plain["input_ids"].shape[1], rounded["input_ids"].shape[1]
    assert width % 40 and wider % 40 == 0 and width < wider < width + 40  # a width that had to grow
    assert torch.equal(rounded["input_ids"][:, :width], plain["input_ids"])
    assert (rounded["input_ids"][:, width:] == pad).all() and not rounded["attention_mask"][:, width:].any()
    assert torch.equal(rounded["last"], plain["last"])
    assert module.padded_tokens(rounded["attention_mask"], rounded["last"]) == rounded["input_ids"].numel()
    torch.testing.assert_close(scores40, scores1, rtol=1e-5, atol=1e-5)
    assert grads40.keys() == grads1.keys() and len(grads1) > 2
    for name in grads1:
        torch.testing.assert_close(grads40[name], grads1[name], rtol=1e-4, atol=1e-6)


def test_padding_to_a_multiple_on_either_side():
    from relscope.models.scoring import pad_sequences

    ids, mask, last = pad_sequences([[5, 6, 7], [8]], 0, left=True, pad_to_multiple_of=4)
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]] and mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert last.tolist() == [3, 3]  # left padding: every row still ends at the last column
    ids, mask, last = pad_sequences([[5, 6, 7, 1, 2], [8]], 0, pad_to_multiple_of=4)
    assert ids.tolist() == [[5, 6, 7, 1, 2, 0, 0, 0], [8, 0, 0, 0, 0, 0, 0, 0]]
    assert last.tolist() == [4, 0] and mask.sum().item() == 6
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        pad_sequences([[1]], 0, pad_to_multiple_of=0)


def test_chunks_keep_to_the_multiple_and_change_no_score():
    groups, _ = build_groups(QUERIES, QRELS, PASSAGES, RUN, negatives=3, seed=1)
    module, builder, pad = _module(3)
    module.pad_to_multiple_of = 16  # as relscope train sets it from the config, beside the collator's
    batch = GroupCollator(groups, OBJECTIVES.get("listwise"), builder, 3, pad, pad_to_multiple_of=16)(
        [Draw(i, 0) for i in range(3)])
    chunked = module(batch["input_ids"], batch["attention_mask"], batch["last"])
    widths = []
    module.spec.backbone_of(module.base).register_forward_pre_hook(
        lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    module(batch["input_ids"], batch["attention_mask"], batch["last"])
    lengths = sorted((batch["last"] + 1).tolist())
    assert len(widths) == 4 and all(w % 16 == 0 or w == batch["input_ids"].shape[1] for w in widths)
    assert sorted(widths) == sorted(min(batch["input_ids"].shape[1], 16 * -(-lengths[i + 2] // 16))
                                    for i in range(0, 12, 3))
    assert module.padded_tokens(batch["attention_mask"], batch["last"]) == 3 * sum(widths)
    module.chunk_rows = 0
    torch.testing.assert_close(chunked, module(batch["input_ids"], batch["attention_mask"], batch["last"]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [0, -1, True, 32.0, 257])
def test_pad_to_multiple_of_is_validated_where_it_enters(value):
    from relscope.config import from_mapping
    from relscope.errors import ConfigError
    from relscope.training.config import TrainConfig

    assert from_mapping(TrainConfig, {"train": ["x.jsonl"], "pad_to_multiple_of": 32}).pad_to_multiple_of == 32
    with pytest.raises(ConfigError, match="pad_to_multiple_of"):  # 257: wider than max_length (256)
        from_mapping(TrainConfig, {"train": ["x.jsonl"], "pad_to_multiple_of": value})


@pytest.mark.parametrize("rows", [0, 4])
def test_chunk_rows_is_validated_where_it_enters(rows, tmp_path):
    from relscope.config import from_mapping
    from relscope.training.config import TrainConfig

    assert from_mapping(TrainConfig, {"train": ["x.jsonl"], "chunk_rows": rows}).chunk_rows == rows
    with pytest.raises(Exception, match="chunk_rows"):
        from_mapping(TrainConfig, {"train": ["x.jsonl"], "chunk_rows": -1})
