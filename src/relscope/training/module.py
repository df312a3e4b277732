"""The trained unit: a PEFT-wrapped LM and a scoring head, scoring padded prompts at their last token."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from relscope.models.heads import Head
from relscope.models.specs import ModelSpec

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


class RerankerModule(nn.Module):
    """forward(input_ids, attention_mask, last) -> (rows,) scores. Only the backbone runs: no vocabulary logits."""

    def __init__(self, peft_model: PeftModel, spec: ModelSpec, head: Head) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.head = head
        self.spec = spec

    @property
    def base(self) -> PreTrainedModel:
        """The transformers model under the PEFT wrapper, its LoRA layers injected in place."""
        return self.peft_model.get_base_model()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(rows, length) right- or left-padded prompts -> (rows,) scores read at each row's `last` token."""
        backbone = self.spec.backbone_of(self.base)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        picked = hidden[torch.arange(len(last), device=hidden.device), last]
        return self.head(picked)

    def trainable_head_state(self) -> dict[str, torch.Tensor]:
        """The head's own trained weights (a linear head); answer heads reuse the frozen unembedding."""
        return {k: v for k, v in self.head.state_dict().items() if not k.startswith("unembedding.")}
