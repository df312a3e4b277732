"""Labelled prompts for the representation analyses (probes, attention), and what a model computes on them.

Pointwise: each group gives its positive (label 1) and one negative (label 0), both judged alone.
Pairwise: each group gives (positive, negative) as documents A, B (label 1: A is correct) and the swap (label 0),
so a probe cannot learn the position instead of the relevance.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from relscope.data.groups import TrainingGroup, first_negative
from relscope.errors import ConfigError, DataError
from relscope.models.scoring import pad_sequences
from relscope.prompts.tokenize import PromptBuilder, TokenizedPrompt

if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn
    from transformers import PreTrainedModel

    from relscope.models.load import LoadedModel


@dataclass(frozen=True)
class LabelledPrompt:
    qid: str
    prompt: TokenizedPrompt
    label: int  # pointwise: 1 = relevant; pairwise: 1 = document A is the relevant one


def labelled_prompts(groups: Sequence[TrainingGroup], builder: PromptBuilder, max_groups: int,
                     negative_kind: str = "hard", seed: int = 0) -> list[LabelledPrompt]:
    """Two prompts per group (balanced labels) from `max_groups` groups drawn with `seed`."""
    usable = [g for g in groups if g.positives and first_negative(g, negative_kind) is not None]
    if not usable:
        raise DataError(f"no group has a positive and a {negative_kind!r} negative; choose another negative kind "
                        "(hard, random, any) or other groups")
    chosen = random.Random(seed).sample(usable, min(max_groups, len(usable)))
    pairwise = builder.template.kind == "pairwise"
    out = []
    for group in chosen:
        positive, negative = group.positives[0], first_negative(group, negative_kind)
        if pairwise:
            out += [LabelledPrompt(group.qid, builder.build(group.query, [positive, negative]), 1),
                    LabelledPrompt(group.qid, builder.build(group.query, [negative, positive]), 0)]
        else:
            out += [LabelledPrompt(group.qid, builder.build(group.query, [positive]), 1),
                    LabelledPrompt(group.qid, builder.build(group.query, [negative]), 0)]
    return out


@contextmanager
def adapter_state(model: PreTrainedModel | PeftModel, enabled: bool) -> Iterator[None]:
    """Run a PEFT model with its LoRA update (enabled) or as its base model; a plain model runs as it is."""
    with nullcontext() if enabled or not hasattr(model, "disable_adapter") else model.disable_adapter():
        yield


@torch.inference_mode()
def last_token_states(backbone: nn.Module, prompts: Sequence[TokenizedPrompt], pad_id: int,
                      batch_size: int = 16) -> np.ndarray:
    """(layers + 1, n, d_model) float32: the hidden state at each prompt's last token after the embeddings
    (row 0) and after every layer (the last row has the final norm applied, as transformers returns it).
    Right padding: under causal attention the pads never reach a real token."""
    device = next(backbone.parameters()).device
    chunks = []
    for start in range(0, len(prompts), batch_size):
        ids, mask, last = pad_sequences([p.input_ids for p in prompts[start:start + batch_size]], pad_id)
        states = backbone(input_ids=ids.to(device), attention_mask=mask.to(device),
                          output_hidden_states=True).hidden_states
        rows = torch.arange(len(last))
        chunks.append(torch.stack([h[rows, last.to(device)] for h in states]).float().cpu())
    return torch.cat(chunks, dim=1).numpy()


def load_with_prompts(model: str | None, adapter: str | None, template: str | None,
                      max_length: int | None) -> tuple[LoadedModel, PromptBuilder]:
    """(loaded model, prompt builder): the base model, or base + adapter unmerged (so the adapter can be switched off
    for the base half of a comparison), with the adapter's template and max_length unless they are given (else
    yes_no and 256)."""
    from relscope.models.adapters import load_trained, resolve_max_length
    from relscope.models.load import load_model
    from relscope.prompts.presets import preset_for
    from relscope.prompts.templates import get_template

    max_length = resolve_max_length(max_length, adapter, 256)
    if adapter:
        loaded, _, meta = load_trained(adapter, model=model, template=template)
        template = meta["template"]
    elif (preset := None if template else preset_for(model)) is not None:  # a published reranker: its own prompt
        if preset.base_model:  # these analyses compare an adapter with its base: they need both named
            raise ConfigError(f"{model}: a published adapter ({preset.name}) on {preset.base_model}; give it as "
                              f"--adapter <its downloaded folder> with --model <its base model>, so the base half is "
                              "the base model")
        loaded = load_model(model)
        template = preset.template
    else:
        loaded = load_model(model or "smollm2-135m-instruct")
    return loaded, PromptBuilder(loaded.tokenizer, get_template(template or "yes_no"), max_length)
