"""TransformerLens 4.x's own patching over the same Hugging Face model, for bench/patching.py.

TransformerLens is a bench-only optional dependency (`pip install -e .[bench]`). The bridge
(`TransformerBridge.boot_transformers(..., hf_model=)`) wraps the very model relscope patches, so both see the same
weights; its patching runs `transformer_lens.patching.generic_activation_patch`, the function under every
`get_act_patch_*`, with one run_with_hooks per patched site. TransformerLens patches one position (or one head) at
a time; a position group is a list of positions, so the patch setter given to it writes the group's positions.
The bridge switches the model to eager attention (as TransformerLens requires).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# relscope component -> TransformerLens activation name (blocks.{layer}.hook_...)
TL_NAMES = {"resid_pre": "resid_pre", "resid_post": "resid_post", "attn": "attn_out", "mlp": "mlp_out", "z": "z"}


def boot_bridge(loaded, folder: str):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(folder, hf_model=loaded.model, tokenizer=loaded.tokenizer,
                                               device="cpu")


def tl_logit_diffs(bridge, head, pair, sites: Sequence) -> np.ndarray:
    """The patched logit difference of each site, computed by TransformerLens's generic_activation_patch."""
    import pandas as pd
    from transformer_lens.patching import generic_activation_patch

    yes, no = (int(i) for i in head.answer_ids)
    clean_ids, corrupted_ids = (torch.tensor([p.input_ids]) for p in (pair.clean, pair.corrupted))

    def metric(logits):
        return logits[0, -1, yes] - logits[0, -1, no]

    with torch.inference_mode():
        _, clean_cache = bridge.run_with_cache(clean_ids)
    groups = sorted({s.group for s in sites})
    where = {g: torch.tensor(pair.corrupted.positions(g)) for g in groups}
    out = np.empty(len(sites))
    for component in sorted({s.component for s in sites}):
        chosen = [i for i, s in enumerate(sites) if s.component == component]
        index = pd.DataFrame({"layer": [sites[i].layer for i in chosen],
                              "group": [groups.index(sites[i].group) for i in chosen],
                              "head": [sites[i].head if sites[i].head is not None else 0 for i in chosen]})

        def setter(corrupted, index_row, clean, heads=component == "z"):
            positions = where[groups[index_row[1]]]
            if heads:  # (batch, pos, head, d_head)
                corrupted[:, positions, index_row[2]] = clean[:, positions, index_row[2]]
            else:
                corrupted[:, positions] = clean[:, positions]
            return corrupted

        with torch.inference_mode():
            values = generic_activation_patch(bridge, corrupted_ids, clean_cache, metric, setter, TL_NAMES[component],
                                              index_df=index)
        out[chosen] = values.cpu().numpy()
    return out
