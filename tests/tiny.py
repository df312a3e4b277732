"""Tiny random models and a tiny tokenizer, built offline from config, for fast tests."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from relscope.models.load import LoadedModel
from relscope.models.specs import get_spec

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt_neox", "phi3")
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "Query: what is the capital of france Passage: Paris is the capital and largest city of France.",
    "Does the passage answer the query? Answer yes or no. Which document is more relevant? Answer A or B.",
    "The quick brown fox jumps over the lazy dog while bananas ripen in tropical climates.",
    "query: document: system user assistant You judge whether a passage answers a search query.",
    "Rivers flow to the sea; mountains rise above the clouds; 0123456789 numbers and punctuation!",
]


@functools.lru_cache(maxsize=None)
def _trained_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return tok


def tiny_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer().to_str()),
        eos_token="<|im_end|>" if chat else "<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if chat:
        tokenizer.chat_template = CHATML
    return tokenizer


# Qwen2's pre-tokenizer pattern: punctuation keeps the newlines after it (".\n" is one piece), which a one-call
# tokenisation of the whole prompt would merge where the references tokenise document and separator apart.
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
NEWLINE_CORPUS = ["Paris is the capital and largest city of France.\nYou are a search relevance expert.\n",
                  "The quick brown fox jumps over the lazy dog.\nRelevance:\nquery: document:\n"]


@functools.lru_cache(maxsize=None)
def _trained_like(kind: str) -> Tokenizer:
    """A tiny BPE of one of three behaviours: "bpe" (GPT-2-style bytes), "qwen" (Qwen2's pattern: ".\n" merges) or
    "sentencepiece" (Metaspace, "▁" marking the first word of each text only, as Llama's tokenizer does now)."""
    tok = Tokenizer(models.BPE())
    if kind == "sentencepiece":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet: list[str] = []
    else:
        qwen = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.pre_tokenizer = qwen if kind == "qwen" else pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator((CORPUS + NEWLINE_CORPUS) * 3, trainer=trainer)
    return tok


def preset_tokenizer(bos: str | None = None, kind: str = "bpe") -> PreTrainedTokenizerFast:
    """A tiny tokenizer with the answer words as tokens and, for Gemma and Llama, a BOS that the tokenizer adds
    before each text as theirs do (Llama-2's pair template: <s> A <s> B)."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained_like(kind).to_str()),
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    # the answer words as tokens, and a space-led " Yes" as Gemma's vocabulary has one ("▁Yes"): reading it instead of
    # the bare "Yes" the reference reads would be the silent error the presets exist to prevent
    tokenizer.add_tokens(["yes", "no", "Yes", "No", AddedToken(" Yes", normalized=False)])
    if bos:
        tokenizer.add_special_tokens({"bos_token": bos})
        bos_id = tokenizer.convert_tokens_to_ids(bos)
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    return tokenizer


def tiny_config(family: str, vocab_size: int = 400):
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "gpt_neox":
        return GPTNeoXConfig(**common, rotary_pct=0.25, use_parallel_residual=True)
    kv = dict(num_key_value_heads=2)
    if family == "llama":
        return LlamaConfig(**common, **kv)
    if family == "mistral":
        return MistralConfig(**common, **kv, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**common, **kv)
    if family == "qwen3":
        return Qwen3Config(**common, **kv, head_dim=8)
    if family == "gemma3_text":
        return Gemma3TextConfig(**common, **kv, head_dim=8, sliding_window=16, query_pre_attn_scalar=8)
    if family == "phi3":
        return Phi3Config(**common, **kv)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="eager")
    return model.eval()


def tiny_loaded(family: str = "llama", chat: bool = True, seed: int = 0) -> LoadedModel:
    model = tiny_model(family, seed)
    return LoadedModel(model, tiny_tokenizer(chat), get_spec(model), f"tiny-{family}", "memory")


def tiny_trec_folder(parent: Path) -> Path:
    """A tiny, valid TREC folder: 2 queries, 5 passages, a run and graded qrels."""
    folder = parent / "trec"
    folder.mkdir()
    (folder / "queries.tsv").write_text("1\twhat is the capital of france\n2\twhy are bananas yellow\n")
    (folder / "collection.tsv").write_text(
        "p1\tParis is the capital and largest city of France.\n"
        "p2\tBananas are yellow because of carotenoids.\n"
        "p3\tThe quick brown fox jumps over the lazy dog.\n"
        "p4\tRivers flow to the sea.\n"
        "p5\tMountains rise above the clouds.\n"
    )
    (folder / "run.bm25.txt").write_text(
        "1 Q0 p3 1 9.0 bm25\n1 Q0 p1 2 8.0 bm25\n1 Q0 p4 3 7.0 bm25\n1 Q0 p5 4 6.0 bm25\n"
        "2 Q0 p4 1 5.0 bm25\n2 Q0 p2 2 4.0 bm25\n2 Q0 p5 3 3.0 bm25\n"
    )
    (folder / "qrels.txt").write_text("1 0 p1 3\n1 0 p3 0\n2 0 p2 2\n2 0 p4 0\n")
    return folder


def tiny_group_file(parent: Path) -> Path:
    """A Tevatron group file of 12 groups: one positive and three negatives each."""
    from relscope.data.groups import NegativePassage, TrainingGroup, write_groups

    topics = [("what is the capital of france", "Paris is the capital and largest city of France."),
              ("why are bananas yellow", "Bananas are yellow because of carotenoids."),
              ("where do rivers flow", "Rivers flow to the sea.")]
    noise = ["The quick brown fox jumps over the lazy dog.", "Mountains rise above the clouds.",
             "Numbers and punctuation 0123456789!", "Bananas ripen in tropical climates."]
    groups = [
        TrainingGroup(f"q{i}", topics[i % 3][0], (topics[i % 3][1],),
                      tuple(NegativePassage(noise[(i + j) % 4], "hard", f"n{(i + j) % 4}") for j in range(3)))
        for i in range(12)
    ]
    path = parent / "groups.jsonl"
    write_groups(groups, path)
    return path


def tiny_study_yaml(path: Path, model: Path, trec: Path, groups: Path, **mechanisms) -> Path:
    """A study config small enough for the unit tier: every stage on a tiny model in about two minutes."""
    import yaml

    config = {
        "name": "tiny", "model": str(model), "budget_minutes": 10,
        "dev": {"data": str(trec), "top_k": 3},
        "train": {"train": [str(trec)], "objective": "yes_no", "negatives": 1, "max_length": 96,
                  "lora": {"rank": 2, "alpha": 4}, "max_steps": 2, "batch_size": 2, "save_steps": 1,
                  "learning_rate": 1e-3, "report_to": []},
        "ablation": {"variants": ["attn-only", "up+gate"]},
        "representations": {"groups": str(groups), "window": 1, "attention_groups": 4, "probe_groups": 6,
                            "folds": 2, "max_length": 96},
        "mechanisms": {"groups": str(groups), "max_pairs": 2, "heads_pairs": 2, "knockout_size": 2,
                       "knockout_groups": 3, "knockout_queries": 2, "random_draws": 1, "min_gap": 0.0,
                       "max_length": 96, **mechanisms},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def tiny_patching(family: str, groups: Path, dtype: torch.dtype = torch.float32, pairs: int = 2):
    """(PatchingEngine, pairs) of a tiny model in `dtype` with the yes/no head, on the first `pairs` groups."""
    from relscope.analysis.patching.engine import PatchingEngine
    from relscope.analysis.patching.pairs import build_pairs
    from relscope.data.groups import read_groups
    from relscope.models.heads import build_head
    from relscope.prompts import PromptBuilder, get_template

    loaded = tiny_loaded(family)
    loaded.model.to(dtype)
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no"), 128)
    head = build_head("yes_no", loaded.model, builder)
    built, _ = build_pairs(read_groups(groups), builder, max_pairs=pairs)
    return PatchingEngine(loaded.model, loaded.spec, head, batch_size=8), built
