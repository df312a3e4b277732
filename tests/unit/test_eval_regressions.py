"""Regression tests for issue 16's evaluation bugs: tie order (3), the answer token after "Answer:" (6) and
mis-keyed trained heads (10). Each failed before its fix."""

from __future__ import annotations

from pathlib import Path

import ir_measures
import pytest
from safetensors.torch import load_file, save_file
from tiny import tiny_group_file, tiny_tokenizer

from relscope.cli import main
from relscope.data.trec import read_run, write_run
from relscope.data.types import ScoredDoc
from relscope.errors import ModelError
from relscope.evaluation.metrics import evaluate_run
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder

MEASURES = ("RR(rel=2)@10", "nDCG@10", "AP(rel=2)", "P(rel=2)@1")


def _by_written_rank(path: Path) -> dict[str, dict[str, float]]:
    """A run file's ranking as ir_measures scores with no ties: minus the rank column the file states."""
    scores: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        qid, _, pid, rank, _score, _tag = line.split()
        scores.setdefault(qid, {})[pid] = -float(rank)
    return scores


def _reference(qrels, path: Path) -> dict[str, float]:
    parsed = [ir_measures.parse_measure(m) for m in MEASURES]
    values = ir_measures.calc_aggregate(parsed, qrels, _by_written_rank(path))
    return {name: values[m] for name, m in zip(MEASURES, parsed)}


def test_tied_scores_are_evaluated_in_the_order_the_run_is_written(tmp_path):
    """Bug 3: ties were broken by document id inside pytrec_eval, not by first-stage rank as the run is written."""
    # "a" and "b" tie (as bf16 heads make common); the first stage put the relevant "a" first.
    # pytrec_eval would put "b" first: it breaks ties by document id, descending.
    run = {"1": [ScoredDoc("a", 0.5), ScoredDoc("b", 0.5), ScoredDoc("c", 0.25)],
           "2": [ScoredDoc("d10", 1.0), ScoredDoc("d9", 1.0)]}
    qrels = {"1": {"a": 2, "b": 0, "c": 1}, "2": {"d10": 3, "d9": 0}}
    write_run(run, tmp_path / "run.trec")
    mean, per_query = evaluate_run(qrels, run, MEASURES)
    assert mean == pytest.approx(_reference(qrels, tmp_path / "run.trec"))
    assert per_query["1"]["RR(rel=2)@10"] == 1.0 and per_query["2"]["RR(rel=2)@10"] == 1.0
    # and the written file, read back and evaluated, gives the same numbers again
    assert evaluate_run(qrels, read_run(tmp_path / "run.trec"), MEASURES)[0] == pytest.approx(mean)


def test_trec_eval_reads_a_written_run_in_its_written_order(tmp_path):
    """Bug 3, outside relscope: trec_eval (pytrec_eval here) ignores the rank column and breaks score ties by
    document id, so a written run with tied scores meant another ranking there. Printed scores now decrease."""
    run = {"1": [ScoredDoc("a", 0.5), ScoredDoc("b", 0.5), ScoredDoc("c", 0.5), ScoredDoc("z", 0.2)],
           "2": [ScoredDoc("d1", 1e-9), ScoredDoc("d9", 0.0)]}  # 1e-9 and 0 print alike at six decimals
    qrels = {"1": {"a": 2, "b": 0, "c": 1, "z": 3}, "2": {"d1": 3, "d9": 0}}
    write_run(run, tmp_path / "run.trec")
    parsed = [ir_measures.parse_measure(m) for m in MEASURES]
    by_trec_eval = ir_measures.calc_aggregate(parsed, qrels, list(ir_measures.read_trec_run(str(tmp_path / "run.trec"))))
    mean, _ = evaluate_run(qrels, run, MEASURES)
    assert {name: by_trec_eval[m] for name, m in zip(MEASURES, parsed)} == pytest.approx(mean)
    assert mean["RR(rel=2)@10"] == 1.0


def test_fused_ties_are_printed_with_the_metrics_of_the_written_run(tmp_path, capsys):
    """Bug 3: `fuse` printed metrics of a docid-broken tie order while writing the first run's order."""
    (tmp_path / "a.trec").write_text("1 Q0 a 1 1.0 x\n1 Q0 b 2 0.0 x\n")
    (tmp_path / "b.trec").write_text("1 Q0 b 1 1.0 y\n1 Q0 a 2 0.0 y\n")  # minmax: a and b both end at 1.0
    (tmp_path / "qrels").write_text("1 0 a 2\n1 0 b 0\n")
    out = tmp_path / "fused.trec"
    assert main(["fuse", "--run", str(tmp_path / "a.trec"), "--run", str(tmp_path / "b.trec"), "--weights", "1",
                 "1", "--norm", "minmax", "--qrels", str(tmp_path / "qrels"), "--measures", *MEASURES,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    fused = next(line for line in printed if line.startswith("fused")).split("\t")[1:]
    expected = _reference({"1": {"a": 2, "b": 0}}, out)
    assert [float(v) for v in fused] == pytest.approx([expected[m] for m in MEASURES], abs=1e-4)
    assert expected["RR(rel=2)@10"] == 1.0  # the first run's order: "a" (relevant) first


def test_evaluate_breaks_a_user_runs_ties_by_its_rank_column(tmp_path, capsys):
    """Bug 3: a run file whose tied scores are ordered by its ranks is evaluated in that order."""
    (tmp_path / "run").write_text("1 Q0 a 1 0.5 x\n1 Q0 b 2 0.5 x\n")
    (tmp_path / "qrels").write_text("1 0 a 2\n1 0 b 0\n")
    assert main(["evaluate", "--qrels", str(tmp_path / "qrels"), "--run", str(tmp_path / "run"),
                 "--measures", "RR(rel=2)@10", "RR(rel=2)", "P(rel=2)@1"]) == 0
    # ir_measures' providers disagreed: RR@10 (msmarco) kept the file's order, RR and P@1 (pytrec_eval) did not
    assert capsys.readouterr().out.splitlines() == [
        "RR(rel=2)@10\tall\t1.0000", "RR(rel=2)\tall\t1.0000", "P(rel=2)@1\tall\t1.0000"]


def _next_token(tokenizer, prompt: str, continuation: str) -> int:
    """The token a model emits first when it writes `continuation` after `prompt` (tokenised as one text)."""
    before = tokenizer(prompt)["input_ids"]
    after = tokenizer(prompt + continuation)["input_ids"]
    assert after[: len(before)] == before
    return after[len(before)]


@pytest.mark.parametrize("template,answers", [("yes_no", (" yes", " no")), ("pairwise", (" A", " B"))])
def test_plain_prompts_read_the_answer_with_its_leading_space(template, answers):
    """Bug 6: after "Answer:" the model writes " yes"; the bare "yes" token was read instead."""
    tok = tiny_tokenizer(chat=False)
    builder = PromptBuilder(tok, get_template(template))
    assert not builder.uses_chat
    prompt, _ = builder.render("q", ["d"] * len(builder.template.document_slots))
    assert prompt.endswith("Answer:")
    assert builder.answer_ids == tuple(_next_token(tok, prompt, a) for a in answers)
    assert tok.decode([builder.answer_ids[0]]) == answers[0]  # one token, space included


def test_chat_prompts_keep_the_bare_answer_token():
    """Bug 6 (the other side): a chat prompt ends on a newline, so the answer has no leading space."""
    tok = tiny_tokenizer(chat=True)
    builder = PromptBuilder(tok, get_template("yes_no"))
    assert tok.decode([builder.answer_ids[0]]) == "yes"


def _metaspace_tokenizer(chat_template: str | None = None):
    """A SentencePiece-style tokenizer (Llama 2, Gemma: '▁' marks a word's leading space), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tiny import CORPUS

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    raw.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                         special_tokens=["<unk>", "<pad>", "<sep>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", eos_token="<pad>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


def test_a_sentencepiece_plain_prompt_reads_the_word_with_its_space_marker():
    """Bug 6 on a Metaspace tokenizer: the answer after "Answer:" is the '▁yes' piece, not 'yes'."""
    tok = _metaspace_tokenizer()
    builder = PromptBuilder(tok, get_template("yes_no"))
    assert tok.convert_ids_to_tokens(builder.answer_ids[0]) == "▁yes"


def test_a_chat_prompt_ending_in_a_special_token_reads_the_answer_as_the_template_writes_it():
    """A chat turn may open with a special token and no newline (Phi-4's <|im_sep|>): the answer is the first
    token of the assistant turn "yes" as the chat template writes it, not the space-led " yes"."""
    template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'assistant<|im_start|>' + m['content'] }}"
                "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'assistant<|im_start|>' }}{% endif %}")
    tok = tiny_tokenizer(chat=True)
    tok.chat_template = template
    builder = PromptBuilder(tok, get_template("yes_no"))
    prompt, _ = builder.render("q", ["d"])
    assert builder.uses_chat and prompt.endswith("<|im_start|>")
    turn = [{"role": "user", "content": "x"}]
    asked = tok.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    answered = tok.apply_chat_template(turn + [{"role": "assistant", "content": "yes"}], tokenize=False)
    written = tok(answered, add_special_tokens=False)["input_ids"][len(tok(asked, add_special_tokens=False)
                                                                        ["input_ids"])]
    assert builder.answer_ids[0] == written
    assert tok.decode([written]).startswith("y")  # bare: the space-led token would decode to " y..."


@pytest.fixture(scope="module")
def linear_checkpoint(tiny_family_dir, tmp_path_factory) -> Path:
    """A listwise (linear head) checkpoint of a 2-step tiny training run."""
    from relscope.config import from_mapping
    from relscope.training.config import TrainConfig
    from relscope.training.job import run_train_job

    tmp = tmp_path_factory.mktemp("linear")
    config = from_mapping(TrainConfig, dict(
        model=str(tiny_family_dir("llama")), train=[str(tiny_group_file(tmp))], objective="listwise", negatives=2,
        max_length=96, max_steps=2, batch_size=2, save_steps=2, report_to=[], lora={"rank": 4}))
    run_train_job(config, tmp / "run", progress=False)
    return tmp / "run" / "checkpoint-2"


def _copy_with_head(checkpoint: Path, dest: Path, head: dict | None) -> Path:
    import shutil

    shutil.copytree(checkpoint, dest)
    (dest / "head.safetensors").unlink()
    if head is not None:
        save_file(head, dest / "head.safetensors")
    return dest


def test_a_mis_keyed_head_file_is_refused_naming_the_keys(linear_checkpoint, trec_dir, tmp_path, capsys):
    """Bug 10: a head.safetensors with other keys loaded with strict=False and left a random head."""
    from relscope.models.adapters import load_trained

    state = load_file(linear_checkpoint / "head.safetensors")
    renamed = {k.replace("score.", "scorer."): v for k, v in state.items()}
    folder = _copy_with_head(linear_checkpoint, tmp_path / "renamed", renamed)
    with pytest.raises(ModelError) as err:
        load_trained(folder)
    message = str(err.value)
    assert str(folder / "head.safetensors") in message
    assert "score.weight" in message and "scorer.weight" in message and "\n" not in message
    # the command line says it in one line and exits 2
    assert main(["rerank", "--adapter", str(folder), "--data", str(trec_dir), "--top-k", "2", "--quiet",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]  # (model loading draws progress bars)
    assert len(errors) == 1 and "scorer.weight" in errors[0] and "Traceback" not in err


def test_a_head_file_of_the_wrong_shape_or_absent_is_refused(linear_checkpoint, tmp_path):
    """Bug 10: a head of another width, or none at all for a trained linear head, is an error, not a random head."""
    import torch

    from relscope.models.adapters import load_trained

    state = load_file(linear_checkpoint / "head.safetensors")
    wider = {k: torch.zeros(*v.shape[:-1], v.shape[-1] * 2) if k.endswith("weight") else v for k, v in state.items()}
    with pytest.raises(ModelError, match="shape"):
        load_trained(_copy_with_head(linear_checkpoint, tmp_path / "wide", wider))
    with pytest.raises(ModelError, match="head.safetensors"):
        load_trained(_copy_with_head(linear_checkpoint, tmp_path / "none", None))


def test_the_checkpoints_own_head_loads_exactly(linear_checkpoint):
    """Bug 10 (the other side): the saved head comes back bit for bit."""
    from relscope.models.adapters import load_trained

    _, head, _ = load_trained(linear_checkpoint)
    saved = load_file(linear_checkpoint / "head.safetensors")
    assert saved and all((head.state_dict()[k].float() == v.float()).all() for k, v in saved.items())


def test_rrf_fuses_each_runs_own_ranks_even_where_its_scores_tie():
    """RRF ranks came from argsort over the first run's passage order, so a tie inside the second run was broken
    by the first run's order instead of the second run's own ranking."""
    from relscope.evaluation.fusion import RRF_K, fuse_runs

    first = {"1": [ScoredDoc("a", 3.0), ScoredDoc("b", 2.0), ScoredDoc("c", 1.0)]}
    second = {"1": [ScoredDoc("c", 1.0), ScoredDoc("b", 1.0), ScoredDoc("a", 0.0)]}  # c ranked above b, tied score
    fused = {d.pid: d.score for d in fuse_runs([first, second], [0.0, 1.0], "rrf")["1"]}
    assert fused == pytest.approx({"c": 1 / (RRF_K + 1), "b": 1 / (RRF_K + 2), "a": 1 / (RRF_K + 3)})
