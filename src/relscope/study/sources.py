"""What the source studies report, for the report to set beside our numbers.

Only what the studies state is here; where a study gives a finding without a number, the finding is
quoted as a finding. Keys are the report's (section, quantity).
"""

from __future__ import annotations

STUDIES = {
    "anatomy": "LoRA anatomy: Nijasure, Chowdhury and Allan, How Relevance Emerges (arXiv 2504.08780); "
               "Mistral-7B / Llama-3.1-8B / Pythia-6.9B pointwise rerankers, LoRA rank 8, MS MARCO",
    "dynamics": "training dynamics and representations: the Phi-3 pairwise LoRA reranker study (Document A or B?)",
    "patching": "activation patching of relevance judgments: Llama-family yes/no judges on MS MARCO (183 queries)",
    "first stage": "Anserini/Pyserini BM25 regression (k1 0.9, b 0.4) on TREC DL 2019 passage",
}

SOURCE = {
    ("zero-shot", "BM25 nDCG@10"): "0.5058 (Anserini regression)",
    ("checkpoints", "convergence"): "most of the gain early; converged well before the last checkpoint",
    ("ablations", "none"): "the base model",
    ("ablations", "attn-only"): "above MLP-only, below all",
    ("ablations", "mlp-only"): "below MHA-only",
    ("ablations", "all"): "best",
    ("ablations", "up+gate"): "most of the gain",
    ("ablations", "down"): "less than up + gate",
    ("ablations", "all@0.15625-0.5"): "layers 5-15 of 32: close to all",
    ("ablations", "rank"): "ranks 1, 2, 8 and 32 comparable",
    ("representations", "grad norm layer 0 vs late"): "237 vs 0.25",
    ("representations", "cliff"): "one sharp loss drop (a phase transition)",
    ("representations", "probe"): "0.455 -> 0.825, the jump at layer 16 of 32 (fine-tuned)",
    ("representations", "layer groups"): "middle only 84.25 % vs all layers 83.0 %",
    ("patching", "early"): "early layers read the query and document (document positions)",
    ("patching", "middle"): "middle layers process relevance per the instruction (instruction positions)",
    ("patching", "late"): "late attention heads write the judgment (last position)",
    ("heads", "knockout"): "knocking out the top-IE heads hurts judgment F1 and nDCG@10 far more than random heads",
}
