"""Attention from document tokens to query tokens (`relscope attention BASE [ADAPTER]`).

For each chosen layer and head: the attention mass that document positions put on query positions,
sum over query keys, mean over document queries, mean over examples; base vs fine-tuned and the change.
Attention weights need the eager implementation; it is switched on for this analysis only and back after.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from relscope.analysis.examples import LabelledPrompt, adapter_state
from relscope.analysis.settings import AttentionSettings, study_layers
from relscope.io import atomic_path, atomic_write_json
from relscope.manifest import build_manifest
from relscope.models.scoring import unwrap
from relscope.prompts.tokenize import TokenizedPrompt
from relscope.reports import plots
from relscope.reports.tables import write_table

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from relscope.models.specs import ModelSpec

ATTENTION = "attention"  # the table written (.csv, .md) and the arrays (.npz)
BASE_MEAN, TUNED_MEAN = "base mean", "fine-tuned mean"  # columns: mean document -> query mass per layer
CHANGE_FIGURE = "attention_change.png"  # fine-tuned - base per head (attention_base.png, attention_fine_tuned.png)


@contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """Attention weights exist only in the eager implementation: use it inside, restore the fast one after."""
    config = model.config
    before = getattr(config, "_attn_implementation", None)
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before not in (None, "eager"):
            model.set_attn_implementation(before)


def mass_to_query(attentions: Sequence[torch.Tensor], prompt: TokenizedPrompt, layers: Sequence[int]) -> np.ndarray:
    """(len(layers), heads): mean over document positions of the attention summed over query positions."""
    docs = torch.tensor(prompt.positions("document"))
    query = torch.tensor(prompt.positions("query"))
    rows = []
    for layer in layers:
        weights = attentions[layer][0].float()  # (heads, seq, seq): row = attending position
        rows.append(weights[:, docs][:, :, query].sum(-1).mean(-1))
    return torch.stack(rows).cpu().numpy()


@torch.inference_mode()
def document_to_query_attention(model: PreTrainedModel | PeftModel, spec: ModelSpec, examples: Sequence[LabelledPrompt],
                                layers: Sequence[int], adapter: bool) -> np.ndarray:
    """(len(layers), heads) averaged over examples, one example per forward (no padding to mask out)."""
    base = unwrap(model)
    backbone = spec.backbone_of(base)
    device = next(base.parameters()).device
    total = None
    with eager_attention(base), adapter_state(model, adapter):
        for example in examples:
            ids = torch.tensor([example.prompt.input_ids], device=device)
            attentions = backbone(input_ids=ids, output_attentions=True).attentions
            mass = mass_to_query(attentions, example.prompt, layers)
            total = mass if total is None else total + mass
    return total / len(examples)


def attention_job(settings: AttentionSettings, out: str | Path) -> list[dict]:
    """Base (and fine-tuned) attention mass from document to query tokens; table, heatmaps, manifest."""
    from relscope.analysis.examples import labelled_prompts, load_with_prompts
    from relscope.data.dataset import data_path
    from relscope.data.groups import read_groups
    from relscope.models.specs.base import num_layers

    s, out = settings, Path(out)
    groups, adapter = s.groups, s.adapter
    loaded, builder = load_with_prompts(s.model, adapter, s.template, s.max_length)
    template = builder.template.name
    layers = list(s.layers) if s.layers else study_layers(num_layers(loaded.model.config), hidden_states=False)
    examples = labelled_prompts(read_groups(data_path(str(groups))), builder, s.max_groups, "any")
    results = {"base": document_to_query_attention(loaded.model, loaded.spec, examples, layers, adapter=False)}
    if adapter:
        results["fine-tuned"] = document_to_query_attention(loaded.model, loaded.spec, examples, layers, adapter=True)
        results["change"] = results["fine-tuned"] - results["base"]
    out.mkdir(parents=True, exist_ok=True)
    heads = [str(h) for h in range(results["base"].shape[1])]
    for name, values in results.items():
        plots.save(plots.heatmap(values, [str(layer) for layer in layers], heads,
                                 f"{loaded.name}: attention mass, document → query ({name})",
                                 "attention mass" if name != "change" else "fine-tuned − base",
                                 xlabel="head", ylabel="layer", diverging=name == "change"),
                   out / f"{ATTENTION}_{name.replace('-', '_')}.png")
    rows = [{"layer": layer, **{f"{name} mean": float(values[i].mean()) for name, values in results.items()},
             **{f"{name} max head": int(values[i].argmax()) for name, values in results.items() if name != "change"}}
            for i, layer in enumerate(layers)]
    write_table(rows, out / ATTENTION, f"{loaded.name}: mean attention mass from document to query tokens "
                f"({len(examples)} prompts)")
    with atomic_path(out / f"{ATTENTION}.npz") as tmp, tmp.open("wb") as f:
        np.savez(f, layers=np.array(layers), **{k.replace("-", "_"): v for k, v in results.items()})
    atomic_write_json(out / "manifest.json", build_manifest(
        {"model": loaded.source, "adapter": adapter, "template": template, "layers": layers,
         "groups": str(groups), "examples": len(examples)}, {}))
    return rows
