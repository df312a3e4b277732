"""`relscope export` (issue 21): a trained checkpoint, merged, scores in transformers and in sentence-transformers'
CrossEncoder as it scores in relscope (within 1e-4), from the prompt and token ids the export writes down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from relscope.cli import main
from relscope.evaluation.export import EXPORT_FILE
from relscope.evaluation.rerank import Reranker
from relscope.models.adapters import load_trained
from tiny import preset_tokenizer, tiny_config, tiny_group_file, tiny_tokenizer

QUERY = "what is the capital of france"
DOCS = ["Paris is the capital and largest city of France.", "The quick brown  fox jumps over the lazy dog.",
        "Rivers flow to the sea"]


def _base(folder: Path, tokenizer_kind: str) -> Path:
    """A tiny random Llama with one of three tokenizers: the usual tiny one ("bpe"); one that pads with its EOS, as
    Llama and Mistral load ("pad-is-eos"); a SentencePiece-like one that adds a BOS ("sentencepiece")."""
    if tokenizer_kind == "pad-is-eos":
        tokenizer = tiny_tokenizer()
        tokenizer.pad_token = None  # relscope's loader then pads with the EOS, which the score template appends
    elif tokenizer_kind == "sentencepiece":
        tokenizer = preset_tokenizer("<s>", "sentencepiece")
    else:
        tokenizer = tiny_tokenizer()
    config = tiny_config("llama", len(tokenizer))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _trained(tmp_path_factory, objective: str, tokenizer_kind: str = "bpe") -> Path:
    from relscope.config import from_mapping
    from relscope.training.config import TrainConfig
    from relscope.training.job import run_train_job

    tmp = tmp_path_factory.mktemp(f"{objective}-{tokenizer_kind}")
    config = from_mapping(TrainConfig, dict(
        model=str(_base(tmp / "base", tokenizer_kind)), train=[str(tiny_group_file(tmp))], objective=objective,
        negatives=2, max_length=96, max_steps=2, batch_size=2, save_steps=2, report_to=[], lora={"rank": 4},
        learning_rate=0.05))
    run_train_job(config, tmp / "run", progress=False)
    return tmp / "run" / "checkpoint-2"


@pytest.fixture(scope="module", params=[("yes_no", "bpe"), ("listwise", "bpe"), ("listwise", "pad-is-eos"),
                                        ("listwise", "sentencepiece")], ids=lambda p: "-".join(p))
def checkpoint(request, tmp_path_factory) -> Path:
    return _trained(tmp_path_factory, *request.param)


def relscope_scores(checkpoint: Path) -> list[float]:
    loaded, head, meta = load_trained(checkpoint, dtype="float32", device="cpu", merge=True)
    reranker = Reranker.build(loaded, meta["template"], head, meta.get("max_length", 512), progress=False)
    return [float(s) for s in reranker.scorer.score([reranker.builder.build(QUERY, [d]) for d in DOCS])]


def transformers_scores(folder: Path, info: dict) -> list[float]:
    """What a user does with the export and transformers alone: fill the prompt, tokenise it as the export says (with
    the tokenizer's special tokens for a plain prompt), read the last token (the classifier finds it itself)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    scores = []
    for doc in DOCS:
        text = info["prompt"].format(query=" ".join(QUERY.split()), document=" ".join(doc.split()))
        ids = torch.tensor([tokenizer(text, add_special_tokens=info["add_special_tokens"])["input_ids"]])
        with torch.no_grad():
            if info["kind"] == "sequence-classification":
                model = AutoModelForSequenceClassification.from_pretrained(folder)
                scores.append(float(model(ids).logits[0, 0]) + info["score_bias"])
            else:
                logits = AutoModelForCausalLM.from_pretrained(folder)(ids).logits[0, -1]
                yes, no = info["answer_ids"]
                scores.append(float(logits[yes] - logits[no]))
    return scores


def test_an_export_scores_as_relscope_in_transformers_and_the_cross_encoder(checkpoint, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    info = json.loads((out / EXPORT_FILE).read_text())
    expected = relscope_scores(checkpoint)
    assert transformers_scores(out, info) == pytest.approx(expected, abs=1e-4)

    sentence_transformers = pytest.importorskip("sentence_transformers")
    assert info["cross_encoder"]
    cross_encoder = sentence_transformers.CrossEncoder(str(out), device="cpu")
    served = cross_encoder.predict([(QUERY, d) for d in DOCS], batch_size=2)  # batched: padding must not matter
    assert [float(s) for s in served] == pytest.approx(expected, abs=1e-4)  # the bias included: relscope's scores


def test_the_export_carries_the_lora_update(checkpoint, tmp_path):
    """The merged weights are not the base model's: the LoRA update is in them (a merge that silently did nothing
    would still load and score)."""
    from safetensors.torch import load_file

    out = tmp_path / "exported"
    assert main(["export", str(checkpoint), "--out", str(out), "--no-cross-encoder"]) == 0
    base = Path(json.loads((checkpoint / "relscope.json").read_text())["model"])
    exported, original = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    shared = sorted(exported.keys() & original.keys())
    assert [k for k in shared if "q_proj" in k]  # the LoRA targets are among the compared tensors
    assert any(not torch.equal(exported[k], original[k]) for k in shared if "q_proj" in k)
    assert not (out / "modules.json").exists()  # --no-cross-encoder: transformers files only


def test_export_refuses_a_folder_that_is_not_empty_and_writes_nothing(checkpoint, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not list(tmp_path.glob(".taken*"))
