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
from tiny import tiny_group_file

QUERY = "what is the capital of france"
DOCS = ["Paris is the capital and largest city of France.", "The quick brown  fox jumps over the lazy dog.",
        "Rivers flow to the sea"]


def _trained(tiny_family_dir, tmp_path_factory, objective: str, family: str = "llama") -> Path:
    from relscope.config import from_mapping
    from relscope.training.config import TrainConfig
    from relscope.training.job import run_train_job

    tmp = tmp_path_factory.mktemp(objective)
    config = from_mapping(TrainConfig, dict(
        model=str(tiny_family_dir(family)), train=[str(tiny_group_file(tmp))], objective=objective, negatives=2,
        max_length=96, max_steps=2, batch_size=2, save_steps=2, report_to=[], lora={"rank": 4}, learning_rate=0.05))
    run_train_job(config, tmp / "run", progress=False)
    return tmp / "run" / "checkpoint-2"


@pytest.fixture(scope="module", params=["yes_no", "listwise"])
def checkpoint(request, tiny_family_dir, tmp_path_factory) -> Path:
    return _trained(tiny_family_dir, tmp_path_factory, request.param)


def relscope_scores(checkpoint: Path) -> list[float]:
    loaded, head, meta = load_trained(checkpoint, dtype="float32", device="cpu", merge=True)
    reranker = Reranker.build(loaded, meta["template"], head, meta.get("max_length", 512), progress=False)
    return [float(s) for s in reranker.scorer.score([reranker.builder.build(QUERY, [d]) for d in DOCS])]


def transformers_scores(folder: Path, info: dict) -> list[float]:
    """What a user does with the export and transformers alone: fill the prompt, tokenise it without adding special
    tokens (the prompt holds them), read the last token."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    scores = []
    for doc in DOCS:
        text = info["prompt"].format(query=" ".join(QUERY.split()), document=" ".join(doc.split()))
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
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
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not list(tmp_path.glob(".taken*"))
