"""Scoring heads: what turns the last-token hidden state into a relevance score.

    yes_no  logit("yes") - logit("no") through the model's own unembedding (zero-shot)
    linear  a trained Linear(d_model, 1) on the last token (RankLLaMA / Tevatron)
    ab      logit("A") - logit("B") for pairwise prompts (positive: A is more relevant)
    first_answer  the first answer word's logit alone (bge-reranker-v2-gemma's "Yes")
    two_logit  a trained Linear(d_model, 2) on the last token, logit A - logit B (study 001's classifier head)

Answer heads compute only the two unembedding rows they need, not the full vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from relscope.errors import ConfigError
from relscope.registry import Registry

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from relscope.prompts.templates import PromptTemplate
    from relscope.prompts.tokenize import PromptBuilder


class Head(nn.Module):
    """A scoring head; `kind` is the template kind it reads (pointwise or pairwise)."""

    kind: str = "pointwise"

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (batch, d_model) -> (batch,)
        """(batch, d_model) last-token hidden states -> (batch,) relevance scores."""
        raise NotImplementedError


class AnswerLogitHead(Head):
    """Logit difference of two answer tokens, read from the (possibly tied) unembedding."""

    def __init__(self, unembedding: nn.Module, answer_ids: tuple[int, int], softcap: float | None, kind: str) -> None:
        super().__init__()
        self.unembedding = unembedding  # not copied: LoRA or fine-tuning of lm_head is seen
        self.register_buffer("answer_ids", torch.tensor(answer_ids), persistent=False)
        self.softcap = softcap
        self.kind = kind

    def answer_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, d_model) -> (batch, 2): the logits of the two answer tokens."""
        weight = self.unembedding.weight[self.answer_ids]
        bias = self.unembedding.bias[self.answer_ids] if getattr(self.unembedding, "bias", None) is not None else None
        logits = nn.functional.linear(hidden.to(weight.dtype), weight, bias)
        if self.softcap:  # Gemma-2 style final logit soft-capping, as the model's own lm_head does
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, d_model) -> (batch,): the first answer's logit minus the second's."""
        logits = self.answer_logits(hidden)
        return logits[:, 0] - logits[:, 1]


class FirstAnswerHead(AnswerLogitHead):
    """The first answer word's logit alone (bge-reranker-v2-gemma scores by the logit of "Yes", no "No" term)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, d_model) -> (batch,): the first answer's logit."""
        return self.answer_logits(hidden)[:, 0]


class LinearScoreHead(Head):
    """A trained Linear(d_model, 1) on the last token (RankLLaMA / Tevatron)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, d_model) -> (batch,): the linear score of each row."""
        return self.score(hidden.to(self.score.weight.dtype)).squeeze(-1)


class TwoLogitHead(Head):
    """Study 001's pairwise head: the last token's hidden state projected to two trained logits, A and B."""

    kind = "pairwise"

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, d_model) -> (batch,): logit A - logit B (softmax over the two is P(A))."""
        logits = self.score(hidden.to(self.score.weight.dtype))
        return logits[:, 0] - logits[:, 1]


HeadFactory = Callable[..., Head]
HEADS: Registry[HeadFactory] = Registry("head")


def _answer_head(kind: str, head_class: type[AnswerLogitHead] = AnswerLogitHead) -> HeadFactory:
    def build(model: PreTrainedModel | PeftModel, builder: PromptBuilder) -> Head:
        if builder.template.kind != kind:
            raise ConfigError(f"the {kind} head needs a {kind} template, not {builder.template.name!r}")
        softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        return head_class(model.get_output_embeddings(), builder.answer_ids, softcap, kind)

    return build


HEADS.register("yes_no", _answer_head("pointwise"))
HEADS.register("ab", _answer_head("pairwise"))
HEADS.register("first_answer", _answer_head("pointwise", FirstAnswerHead))
HEADS.register("linear", lambda model, builder: LinearScoreHead(model.config.get_text_config().hidden_size))


def _two_logit_head(model: PreTrainedModel | PeftModel, builder: PromptBuilder) -> Head:
    if builder.template.kind != "pairwise":
        raise ConfigError(f"the two_logit head reads pairwise prompts (A or B), not {builder.template.name!r}")
    return TwoLogitHead(model.config.get_text_config().hidden_size)


HEADS.register("two_logit", _two_logit_head)

def default_head(template: PromptTemplate) -> str:
    """The head a template is read with unless the user picks another: its answer words, else a trained score."""
    if template.answers is None:
        return "linear"
    return "ab" if template.kind == "pairwise" else "yes_no"


def build_head(name: str, model: PreTrainedModel | PeftModel, builder: PromptBuilder) -> Head:
    """The registered head `name` for `model` and `builder`'s template, on the model's device and dtype."""
    head = HEADS.get(name)(model, builder)
    param = next(model.parameters())
    return head.to(device=param.device, dtype=param.dtype)
