"""An external PEFT adapter saved from a sequence-classification model (study 000's released Tevatron rerankers, as
RankLLaMA ships: LoRA plus a trained `score` head in `modules_to_save`) loads with that head, not a random one, and
relscope's scores equal the classification model's own logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

from relscope.errors import ModelError
from relscope.models.adapters import load_trained
from relscope.models.scoring import Scorer
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder

PASSAGES = ["Paris is the capital of France.", "Bananas are yellow.", "The Seine flows through Paris."]


def _classification_adapter(base: Path, out: Path, labels: int) -> torch.nn.Module:
    """A LoRA adapter trained (here: random) on a sequence-classification model of `base`, saved by PEFT."""
    torch.manual_seed(labels)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=labels)
    model.config.pad_token_id = 0
    peft = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))  # B != 0: the adapter changes the scores
    with torch.no_grad():
        model.score.weight.normal_()  # a trained head, not the initial one
    peft.save_pretrained(out)
    return peft.eval()


@pytest.mark.parametrize("labels", [1, 2])
def test_a_peft_adapter_with_a_classification_head_scores_as_the_classifier(labels, tiny_family_dir, tmp_path):
    base = tiny_family_dir("llama")
    reference = _classification_adapter(base, tmp_path / "adapter", labels)
    loaded, head, meta = load_trained(tmp_path / "adapter")
    assert (meta["template"], meta["head"]) == ("score", "linear")  # read with its head, not answer words
    builder = PromptBuilder(loaded.tokenizer, get_template("score"), 128)
    prompts = [builder.build("capital of france", [p]) for p in PASSAGES]
    ours = Scorer(loaded.model, loaded.spec, head, loaded.tokenizer.pad_token_id, progress=False).score(prompts)
    with torch.no_grad():
        logits = torch.stack([reference(input_ids=torch.tensor([p.input_ids])).logits[0] for p in prompts])
    expected = logits[:, 0] if labels == 1 else logits[:, 1] - logits[:, 0]  # two labels: label 1 is "relevant"
    torch.testing.assert_close(torch.as_tensor(ours, dtype=torch.float32), expected.float(), atol=1e-5, rtol=1e-5)


def test_without_its_head_the_adapter_would_score_otherwise(tiny_family_dir, tmp_path):
    """The control: a fresh linear head (what relscope did before) gives other scores, so the test above can fail."""
    base = tiny_family_dir("llama")
    reference = _classification_adapter(base, tmp_path / "adapter", 1)
    loaded, head, _ = load_trained(tmp_path / "adapter")
    with torch.no_grad():
        head.score.weight.normal_()
    builder = PromptBuilder(loaded.tokenizer, get_template("score"), 128)
    prompt = builder.build("capital of france", [PASSAGES[0]])
    ours = Scorer(loaded.model, loaded.spec, head, loaded.tokenizer.pad_token_id, progress=False).score([prompt])
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([prompt.input_ids])).logits[0, 0]
    assert abs(float(ours[0]) - float(expected)) > 1e-3


def test_a_classification_head_of_the_wrong_size_is_refused(tiny_family_dir, tmp_path):
    base = tiny_family_dir("llama")
    _classification_adapter(base, tmp_path / "adapter", 3)
    with pytest.raises(ModelError, match="one or two labels"):
        load_trained(tmp_path / "adapter")
