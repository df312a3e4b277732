"""The trained unit: a PEFT-wrapped LM and a scoring head, scoring padded prompts at their last token."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from relscope.models.heads import Head
from relscope.models.specs import ModelSpec

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def length_chunks(lengths: list[int], rows: int) -> list[list[int]]:
    """Row indices sorted by length and cut into runs of `rows` (0: one run of all, in their order): each run is
    padded only to its own longest prompt. A step's prompts vary in length by passage, so one padded batch spends
    about a third of its tokens on padding (measured on the DL21+DL23 groups: 1,314 real of 1,892 padded)."""
    if rows <= 0 or rows >= len(lengths):
        return [list(range(len(lengths)))]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start:start + rows] for start in range(0, len(order), rows)]


class RerankerModule(nn.Module):
    """forward(input_ids, attention_mask, last) -> (rows,) scores. Only the backbone runs: no vocabulary logits.

    With `chunk_rows` > 0 the rows of a right-padded batch run as length-sorted chunks, each cut to its own longest
    prompt: the same scores up to rounding (causal attention: pads never touch real tokens; other shapes may pick
    other kernels), less padding computed and kept for backward. Each chunk's width is rounded up to
    `pad_to_multiple_of` columns (the batch's own rounding), so chunks keep to the same few shapes."""

    def __init__(self, peft_model: PeftModel, spec: ModelSpec, head: Head, chunk_rows: int = 0,
                 pad_to_multiple_of: int = 1) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.head = head
        self.spec = spec
        self.chunk_rows = chunk_rows
        self.pad_to_multiple_of = pad_to_multiple_of

    @property
    def base(self) -> PreTrainedModel:
        """The transformers model under the PEFT wrapper, its LoRA layers injected in place."""
        return self.peft_model.get_base_model()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(rows, length) right- or left-padded prompts -> (rows,) scores read at each row's `last` token."""
        chunks = self.chunks(attention_mask, last)
        if len(chunks) == 1:
            return self.head(self._last_hidden(input_ids, attention_mask, last))
        picked = []
        for rows in chunks:
            index = torch.tensor(rows, device=input_ids.device)
            width = self._chunk_width(last[index], input_ids.shape[1])
            picked.append(self._last_hidden(input_ids[index, :width], attention_mask[index, :width], last[index]))
        order = torch.tensor([row for rows in chunks for row in rows], device=input_ids.device)
        return self.head(torch.cat(picked)[torch.argsort(order)])

    def chunks(self, attention_mask: torch.Tensor, last: torch.Tensor) -> list[list[int]]:
        """The row chunks `forward` runs: length-sorted ones for right-padded rows, else one of all rows."""
        if self.chunk_rows <= 0 or self.chunk_rows >= len(last):  # no device sync when chunks are off
            return [list(range(len(last)))]
        if not bool((last + 1 == attention_mask.sum(-1)).all()):  # left padding: every last is the end, never cut
            return [list(range(len(last)))]
        return length_chunks((last + 1).tolist(), self.chunk_rows)

    def padded_tokens(self, attention_mask: torch.Tensor, last: torch.Tensor) -> int:
        """Tokens `forward` runs for this batch, pads included."""
        chunks = self.chunks(attention_mask, last)
        if len(chunks) == 1:
            return attention_mask.numel()
        return sum(len(rows) * self._chunk_width(last[rows], attention_mask.shape[1]) for rows in chunks)

    def _chunk_width(self, last: torch.Tensor, batch_width: int) -> int:
        """Columns a right-padded chunk runs: past its longest prompt all are pads, rounded up to the multiple."""
        return min(batch_width, math.ceil((int(last.max()) + 1) / self.pad_to_multiple_of) * self.pad_to_multiple_of)

    def _last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        backbone = self.spec.backbone_of(self.base)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 on either side, as scoring
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                          use_cache=False).last_hidden_state
        return hidden[torch.arange(len(last), device=hidden.device), last]

    def trainable_head_state(self) -> dict[str, torch.Tensor]:
        """The head's own trained weights (a linear head); answer heads reuse the frozen unembedding."""
        return {k: v for k, v in self.head.state_dict().items() if not k.startswith("unembedding.")}
