"""What the three source studies report, quoted exactly, for the report to set beside our numbers.

Each quote names its study and where in it the words or numbers stand (a table, a part, a slide). Its text is
exactly as printed there, up to spacing, markup (`**bold**`, `*italic*`) and the table's column breaks:
`tests/unit/test_sources.py` finds every quote in the study's text in `../shared/seeds/`. Keys of SOURCE are the
report's (section, quantity).
"""

from __future__ import annotations

from dataclasses import dataclass

# The study files in ../shared/seeds/ (see its README.md).
SEEDS = {"000": "000_5da007e9fa9607bc.txt", "001": "001_2f2ad016a6ef4fd4.txt", "002": "002_bb3aa0abd56b78a9.txt"}

STUDIES = {
    "000": "000: Nijasure, Chowdhury and Allan, How Relevance Emerges: A Mechanistic Analysis of LoRA Fine-Tuning in "
           "Reranking LLMs (Tevatron LoRA rerankers on MS MARCO: Llama-3.1-8B, Mistral-7B, Pythia-6.9B; TREC DL19)",
    "001": "001: Deep Dive into Fine Tuning a LoRA Reranker on Phi-3 (a blog post: pairwise A/B prompt, Phi-3-mini in "
           "4-bit, LoRA rank 16 on the fused QKV, 50,000 MS MARCO triples)",
    "002": "002: Liu, Mao and Wen, How do Large Language Models Understand Relevance? A Mechanistic Interpretability "
           "Perspective (reading notes; Llama-3.1-8B-Instruct, MS MARCO and NQ, 100 queries)",
}


@dataclass(frozen=True)
class Quote:
    """Words or a table row of one study, as printed; `cells` are a row's values after its label, in column order."""

    study: str  # "000", "001" or "002"
    where: str  # "Table 3", "Part 4", ...
    text: str  # the sentence, or the row's label
    cells: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # the row's column names, for the reader (not part of the quote)

    @property
    def printed(self) -> str:
        """What the study prints: the sentence, or the row's label and cells in order."""
        return " ".join((self.text, *self.cells))

    def __str__(self) -> str:
        if not self.cells:
            return f"{self.study} {self.where}: {self.text}"
        pairs = zip(self.columns, self.cells)
        shown = ", ".join(f"{c} {v}" for c, v in pairs) if self.columns else " ".join(self.cells)
        return f"{self.study} {self.where}, {self.text}: {shown}"


def _rows(study: str, where: str, columns: tuple[str, ...], rows: dict[str, tuple[str, ...]]) -> dict[str, Quote]:
    return {label: Quote(study, where, label, cells, columns) for label, cells in rows.items()}


# 000 Table 1: MAP, MRR, NDCG@10 per model at each checkpoint step.
TABLE_000_1 = _rows("000", "Table 1", tuple(f"{m} {k}" for m in ("LLaMA3", "Mistral", "Pythia")
                                            for k in ("MAP", "MRR", "NDCG@10")), {
    "5": ("0.1887", "0.4220", "0.1855", "0.1969", "0.4147", "0.2050", "0.1955", "0.4339", "0.1895"),
    "10": ("0.1932", "0.4485", "0.1931", "0.2350", "0.5224", "0.2708", "0.2296", "0.4947", "0.2606"),
    "100": ("0.4861", "0.9380", "0.7225", "0.4094", "0.7657", "0.6010", "0.4957", "0.9884", "0.7390"),
    "300": ("0.5141", "0.9709", "0.7620", "0.4652", "0.8948", "0.6654", "0.5104", "0.9814", "0.7439"),
})
# 000 Table 2: NDCG@10 on DL-19 per LoRA rank (the converged checkpoint in parentheses).
TABLE_000_2 = _rows("000", "Table 2", ("LLaMa3.1 8B", "Mistral-7B", "Pythia6.9b"), {
    "1": ("0.7514 (150)", "0.7277 (200)", "0.7453 (75)"),
    "2": ("0.7402 (100)", "0.5790 (400)", "0.7556 (100)"),
    "8": ("0.7615 (175)", "0.6859 (140)", "0.7490 (95)"),
    "32": ("0.7382 (175)", "0.6854 (125)", "0.7460 (75)"),
})
# 000 Table 3: MRR and NDCG with the MLP or MHA updates zeroed, LoRA rank 8.
TABLE_000_3 = _rows("000", "Table 3", tuple(f"{m} {k}" for m in ("LLaMa3", "Mistral", "Pythia")
                                            for k in ("MRR", "NDCG")), {
    "No LoRA updates": ("0.422", "0.1855", "0.2978", "0.1450", "0.4339", "0.1895"),
    "MLP updates only": ("0.6971", "0.4341", "0.5899", "0.4390", "0.9048", "0.6262"),
    "MHA updates only": ("0.8508", "0.5987", "0.7101", "0.5164", "0.9593", "0.7009"),
    "Both MLP & MHA updates": ("0.9543", "0.7655", "0.9050", "0.6891", "0.9709", "0.7569"),
})
# 000 Table 4: NDCG@10 on DL19 of MLP-only-trained models with the update kept only in some layers or projections.
TABLE_000_4 = _rows("000", "Table 4", ("LLaMA", "Mistral", "Pythia"), {
    "All Layers": ("0.7497", "0.7318", "0.7570"),
    "Layers 5 to 15": ("0.6678", "0.5559", "0.5895"),
    "Layers 5 to 31": ("0.7184", "0.6831", "0.6192"),
    "Layers 0 to 4 and 16 to 31": ("0.2900", "0.2494", "0.4016"),
    "All Layers Up & gate_proj": ("0.7373", "0.6947", "0.7262"),
    "Layers 0 to 15": ("0.7065", "0.5640", "0.7463"),
})
# 002 Table 1: mean ablation of head sets, Llama-3.1-8B-Instruct: judgment F1 and reranking NDCG@10 (change).
TABLE_002_1 = _rows("002", "Table 1", ("judgment F1 pointwise", "judgment F1 pairwise", "reranking NDCG@10 pointwise",
                                       "reranking NDCG@10 pairwise"), {
    "Full model": ("0.91", "0.86", "0.62", "0.62"),
    "- Random-80": ("0.91 (-0.0%)", "0.85 (-1.2%)", "0.60 (-3.2%)", "0.61 (-1.6%)"),
    "- Doc-20": ("0.90 (-1.1%)", "0.85 (-1.2%)", "0.60 (-3.2%)", "0.60 (-3.2%)"),
    "- Query-20": ("0.81 (-11.0%)", "0.81 (-4.7%)", "0.58 (-6.5%)", "0.58 (-6.5%)"),
    "- Inst-20": ("0.78 (-14.3%)", "0.68 (-20.0%)", "0.59 (-4.8%)", "0.57 (-8.1%)"),
    "- Last-20": ("0.55 (-39.6%)", "0.62 (-27.1%)", "0.56 (-9.7%)", "0.55 (-11.3%)"),
    "- Mixed-80": ("0.47 (-48.4%)", "0.50 (-41.2%)", "0.51 (-17.7%)", "0.52 (-16.1%)"),
})

# Findings in words, as printed.
WORDS = {
    "000 convergence": Quote("000", "Section 2", "By Step 300, LLaMA3 slightly edges out Pythia, indicating stronger "
                             "late-stage performance, although all models converge by then."),
    "000 rank": Quote("000", "Section 2", "Notably, a LoRA rank of 1 is already sufficient to encode effective "
                      "ranking behavior, at least on the MS MARCO dataset."),
    "000 projections": Quote("000", "Section 2", "the up and gate projections are substantially more impactful than "
                             "the down projection in the MLP blocks"),
    "000 recovery": Quote("000", "Section 2", "LoRA updates applied only to the MLP layers can recover up to 98% of "
                          "the relevance modeling performance achieved by updating both MHA and MLP components"),
    "000 layers": Quote("000", "Section 2", "Our results (Table 4) show that layers 5–15 contribute most to relevance "
                        "prediction"),
    "001 eval accuracy": Quote("001", "Part 2", "At step 200, the eval accuracy was 53%. Indistinguishable from the "
                               "untrained model. Then, somewhere around step 400, the accuracy jumped to 71%. By step "
                               "600 it was 72.5%. By step 1600 it hit 86%."),
    "001 baseline": Quote("001", "Part 1", "Before starting training, I checked the baseline and the model’s eval "
                          "accuracy was 53.5%."),
    "001 cliff": Quote("001", "Part 2", "The steepest drop in the smoothed loss happened at step ~1220, where the "
                       "loss plunged from 0.57 to 0.34."),
    "001 grad norms": Quote("001", "Part 3", "Layer 0 had a mean gradient norm of 237. Layer 1: 196. Layer 2 dropped "
                            "to 46. By layer 4 it was under 10. The late layers 21 through 31 with average 0.25."),
    "001 grad groups": Quote("001", "Part 3", "Early layers (0-9) averaged 53.1. Middle layers (10-20) averaged 1.5. "
                             "Late layers (21-31) averaged 0.25. The classifier head itself was at 6.6."),
    "001 attention": Quote("001", "Part 4", "The change was 0.0% at every layer. Zero. Doc-to-query attention was "
                           "0.0020 before training and 0.0020 after training, at every single layer I measured."),
    "001 probe": Quote("001", "Part 4", "Layers 0 and 8 showed no improvement, their linear probe accuracy actually "
                       "decreased slightly (0.545 → 0.490 and 0.500 → 0.475). But layer 16 jumped from 0.455 to 0.825. "
                       "Layer 24: 0.440 to 0.825. Layer 31: 0.480 to 0.840."),
    "001 freezing": Quote("001", "Part 5", "Only late layers trainable (20-31): 67.75%. Only early+middle trainable "
                          "(0-19): 69.75%. All layers (control): 83.0%."),
    "001 middle": Quote("001", "Part 5", "only middle layers trainable (10-19), with just 10 out of 32 layers "
                        "unfrozen, hit 84.25%."),
    "002 early": Quote("002", "Tracing information flow", "early layers: extract query and document information"),
    "002 middle": Quote("002", "Tracing information flow", "middle layers: process relevance information according "
                        "to instructions"),
    "002 late": Quote("002", "Tracing information flow", "later layers: generate relevance judgments"),
    "002 knockout": Quote("002", "Evaluation on downstream tasks", "Knockout less than one-tenth of attention heads "
                          "can completely render the model ineffective in relevance-related tasks."),
    "002 sample": Quote("002", "Experimental Setup", "query num: 100 samples"),
}

ALL_QUOTES: tuple[Quote, ...] = (*TABLE_000_1.values(), *TABLE_000_2.values(), *TABLE_000_3.values(),
                                 *TABLE_000_4.values(), *TABLE_002_1.values(), *WORDS.values())


def _join(*quotes: Quote) -> str:
    return "; ".join(map(str, quotes))


# The report's (section, quantity) -> what the study says there.
SOURCE = {
    ("zero-shot", "BM25 nDCG@10"): "0.5058 (Anserini's BM25 regression on TREC DL 2019 passage; not a source study)",
    ("checkpoints", "convergence"): _join(WORDS["000 convergence"], *(TABLE_000_1[s] for s in ("5", "10", "100",
                                                                                              "300"))),
    ("ablations", "none"): str(TABLE_000_3["No LoRA updates"]),
    ("ablations", "mlp-only"): str(TABLE_000_3["MLP updates only"]),
    ("ablations", "attn-only"): str(TABLE_000_3["MHA updates only"]),
    ("ablations", "all"): str(TABLE_000_3["Both MLP & MHA updates"]),
    # Table 4 ablates MLP-only-trained models: a model trained on every projection is not its setting
    ("ablations", "all@0.15625-0.5"): str(TABLE_000_4["Layers 5 to 15"]) + " (MLP-only-trained)",
    ("ablations", "all@0.15625-1.0"): str(TABLE_000_4["Layers 5 to 31"]) + " (MLP-only-trained)",
    ("ablations", "all@0.0-0.15625+0.5-1.0"): str(TABLE_000_4["Layers 0 to 4 and 16 to 31"]) + " (MLP-only-trained)",
    ("ablations", "all@0.0-0.5"): str(TABLE_000_4["Layers 0 to 15"]) + " (MLP-only-trained)",
    ("ablations", "up+gate"): str(TABLE_000_4["All Layers Up & gate_proj"]) + " (MLP-only-trained)",
    ("ablations", "down"): str(WORDS["000 projections"]),
    ("ablations", "rank"): _join(WORDS["000 rank"], *TABLE_000_2.values()),
    ("representations", "grad norm layer 0 vs late"): _join(WORDS["001 grad norms"], WORDS["001 grad groups"]),
    ("representations", "cliff"): str(WORDS["001 cliff"]),
    ("representations", "probe"): str(WORDS["001 probe"]),
    ("representations", "attention"): str(WORDS["001 attention"]),
    ("representations", "layer groups"): _join(WORDS["001 middle"], WORDS["001 freezing"]),
    ("patching", "early"): str(WORDS["002 early"]),
    ("patching", "middle"): str(WORDS["002 middle"]),
    ("patching", "late"): str(WORDS["002 late"]),
    ("heads", "knockout"): _join(*(TABLE_002_1[k] for k in ("Full model", "- Random-80", "- Doc-20", "- Last-20",
                                                            "- Mixed-80"))),
}
