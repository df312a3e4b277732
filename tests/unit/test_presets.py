"""Reranker presets (issue 21): each published reranker's prompt pinned as its reference code builds it, its tokens
and spans, and relscope's score equal to the reference's own scoring recipe on a tiny random model of its family.

The expected strings and token ids below are assembled the way each model's reference code assembles them
(docs/notes/reranker-presets.md quotes that code): prefix, pair and suffix tokenised separately and concatenated,
the answer tokens looked up as the reference looks them up. relscope renders one text from its template; these tests
are what holds the two equal.
"""

from __future__ import annotations

import json
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, GemmaConfig

from relscope.errors import ConfigError
from relscope.evaluation.rerank import Reranker
from relscope.models.load import LoadedModel
from relscope.models.specs import get_spec
from relscope.prompts.presets import PRESETS, preset_for
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder
from tiny import preset_tokenizer, tiny_config

QUERY = "what is the capital of france"
DOCS = ["Paris is the capital and largest city of France.", "The quick brown fox jumps over the lazy dog."]

QWEN3_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
                "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
BGE_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by "
              "providing a prediction of either 'Yes' or 'No'.")
MXBAI_PREFIX = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n")
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = ("You are a search relevance expert who evaluates how well documents match search queries. For each "
              "query-document pair, carefully analyze the semantic relationship between them, then provide your "
              "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")


def ids(tokenizer, text: str, special: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


# -- each reference's own assembly of the tokens, and the ids its score reads -------------------------------------

def qwen3_reference(tokenizer, query: str, doc: str) -> tuple[str, list[int], tuple[int, int]]:
    pair = f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {query}\n<Document>: {doc}"
    tokens = ids(tokenizer, QWEN3_PREFIX) + ids(tokenizer, pair, special=True) + ids(tokenizer, QWEN3_SUFFIX)
    answers = (tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no"))
    return QWEN3_PREFIX + pair + QWEN3_SUFFIX, tokens, answers


def bge_reference(tokenizer, query: str, doc: str) -> tuple[str, list[int], tuple[int, int]]:
    sep = ids(tokenizer, "\n")
    tokens = [tokenizer.bos_token_id] + ids(tokenizer, f"A: {query}") + sep + ids(tokenizer, f"B: {doc}") + sep \
        + ids(tokenizer, BGE_PROMPT)
    yes = ids(tokenizer, "Yes")[0]
    return f"A: {query}\nB: {doc}\n{BGE_PROMPT}", tokens, (yes, yes)


def mxbai_reference(tokenizer, query: str, doc: str) -> tuple[str, list[int], tuple[int, int]]:
    sep = ids(tokenizer, "\n")
    tokens = ids(tokenizer, MXBAI_PREFIX) + ids(tokenizer, f"query: {query}") + sep \
        + ids(tokenizer, f"document: {doc}") \
        + sep + ids(tokenizer, MXBAI_TASK) + ids(tokenizer, MXBAI_SUFFIX)
    text = f"{MXBAI_PREFIX}query: {query}\ndocument: {doc}\n{MXBAI_TASK}{MXBAI_SUFFIX}"
    return text, tokens, (ids(tokenizer, "1")[0], ids(tokenizer, "0")[0])


REFERENCES = {  # preset -> (reference, tokenizer's BOS, model family of the tiny model, tokenizer behaviour)
    "qwen3-reranker": (qwen3_reference, None, "qwen3", "qwen"),
    "bge-reranker-v2-gemma": (bge_reference, "<bos>", "gemma", "bpe"),
    "mxbai-rerank-v2": (mxbai_reference, None, "qwen2", "qwen"),
}


def tiny_family_model(family: str, vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                  pad_token_id=0)
    if family == "gemma":
        config = GemmaConfig(**common)
    elif family == "gemma2":
        config = Gemma2Config(**common, query_pre_attn_scalar=8, sliding_window=16)
    else:
        config = tiny_config(family, vocab_size)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_preset_prompt_is_the_references_string_tokens_and_spans(name):
    reference, bos, _, kind = REFERENCES[name]
    tokenizer = preset_tokenizer(bos, kind)
    builder = PromptBuilder(tokenizer, get_template(PRESETS.get(name).template), 512)
    text, tokens, answers = reference(tokenizer, QUERY, DOCS[0])
    assert builder.render(QUERY, [DOCS[0]])[0] == text  # the golden string: as the model's page builds it
    prompt = builder.build(QUERY, [DOCS[0]])
    assert list(prompt.input_ids) == tokens
    assert tokenizer.decode([prompt.input_ids[p] for p in prompt.positions("query")]).strip() == QUERY
    assert tokenizer.decode([prompt.input_ids[p] for p in prompt.positions("document")]).strip() == DOCS[0]
    assert prompt.positions("last") == [len(tokens) - 1]
    assert builder.answer_ids[0] == answers[0] and (name == "bge-reranker-v2-gemma" or builder.answer_ids == answers)


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_preset_scores_equal_the_references_own_recipe_on_a_tiny_model(name, prefix_cache):
    from relscope.models.scoring import ScoringOptions

    reference, bos, family, kind = REFERENCES[name]
    tokenizer = preset_tokenizer(bos, kind)
    model = tiny_family_model(family, len(tokenizer))
    preset = PRESETS.get(name)
    loaded = LoadedModel(model, tokenizer, get_spec(model), name, "memory")
    reranker = Reranker.build(loaded, preset.template, preset.head, 512, ScoringOptions(prefix_cache=prefix_cache),
                              progress=False)
    ours = reranker.scorer.score([reranker.builder.build(QUERY, [d]) for d in DOCS], [QUERY] * len(DOCS))
    for doc, score in zip(DOCS, ours):
        _, tokens, (yes, no) = reference(tokenizer, QUERY, doc)
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0, -1]
        expected = logits[yes] if preset.head == "first_answer" else logits[yes] - logits[no]
        assert score == pytest.approx(float(expected), abs=1e-4)


def test_gemma2_reads_the_yes_logit_after_its_final_softcap():
    """bge-style scoring on Gemma 2 (final logits soft-capped): the head applies the model's own cap."""
    tokenizer = preset_tokenizer("<bos>")
    model = tiny_family_model("gemma2", len(tokenizer))
    model.config.final_logit_softcapping = 0.5  # small enough that an uncapped read would differ
    loaded = LoadedModel(model, tokenizer, get_spec(model), "bge-gemma2", "memory")
    reranker = Reranker.build(loaded, "bge-reranker-v2-gemma", "first_answer", 512, progress=False)
    score = reranker.scorer.score([reranker.builder.build(QUERY, [DOCS[0]])])[0]
    _, tokens, (yes, _) = bge_reference(tokenizer, QUERY, DOCS[0])
    with torch.no_grad():
        expected = model(torch.tensor([tokens])).logits[0, -1, yes]
    assert score == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("model, preset", [
    ("Qwen/Qwen3-Reranker-0.6B", "qwen3-reranker"), ("Qwen/Qwen3-Reranker-8B", "qwen3-reranker"),
    ("/models/qwen3-reranker-4b/", "qwen3-reranker"), ("BAAI/bge-reranker-v2-gemma", "bge-reranker-v2-gemma"),
    ("mixedbread-ai/mxbai-rerank-large-v2", "mxbai-rerank-v2"),
    ("mixedbread-ai/mxbai-rerank-base-v2", "mxbai-rerank-v2"),
    ("castorini/rankllama-v1-7b-lora-passage", "rankllama"),
    ("Qwen/Qwen3-0.6B", None), ("BAAI/bge-reranker-v2-m3", None), ("smollm2-135m-instruct", None), (None, None),
    ("tomaarsen/Qwen3-Reranker-0.6B-seq-cls", None),  # a converted sequence classifier, not the causal LM
])
def test_preset_is_found_by_the_models_name(model, preset):
    found = preset_for(model)
    assert (found.name if found else None) == preset


def test_rankllama_adapter_scores_as_its_reference_loads_it(tmp_path):
    """A RankLLaMA-style PEFT adapter (LoRA + the trained `score` row in modules_to_save) on a tiny Llama base, found by
    its folder's name: relscope's score equals AutoModelForSequenceClassification + PeftModel merged, read on
    tokenizer(f"query: {q}", f"document: {title} {p}") as the model card does."""
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from relscope.models.adapters import load_trained

    tokenizer = preset_tokenizer("<s>", "sentencepiece")
    base = tiny_family_model("llama", len(tokenizer))
    base.config.pad_token_id = tokenizer.pad_token_id
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=1)
    peft = get_peft_model(classifier, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for param_name, param in peft.named_parameters():
            if "lora_B" in param_name or "score" in param_name:
                param.normal_(0, 0.5)
    adapter = tmp_path / "rankllama-v1-7b-lora-passage"
    peft.save_pretrained(adapter)

    loaded, head, meta = load_trained(adapter, model=str(tmp_path / "base"), merge=True)
    assert (meta["template"], meta["head"]) == ("rankllama", "linear")
    reranker = Reranker.build(loaded, meta["template"], head, meta["max_length"], progress=False)
    ours = reranker.scorer.score([reranker.builder.build(QUERY, [d]) for d in DOCS])

    reference = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=1), adapter).merge_and_unload()
    for doc, score in zip(DOCS, ours):
        inputs = tokenizer(f"query: {QUERY}", f"document: {''} {doc}", return_tensors="pt")
        assert list(inputs["input_ids"][0]) == list(reranker.builder.build(QUERY, [doc]).input_ids)
        with torch.no_grad():
            expected = reference(**inputs).logits[0][0]
        assert score == pytest.approx(float(expected), abs=1e-4)


@pytest.fixture(scope="module")
def qwen3_reranker_dir(tmp_path_factory):
    """A tiny random Qwen3 saved under a Qwen3-Reranker name: relscope must find its preset by that name."""
    folder = tmp_path_factory.mktemp("models") / "Qwen3-Reranker-tiny"
    tokenizer = preset_tokenizer(kind="qwen")
    tiny_family_model("qwen3", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_rerank_picks_the_preset_by_name_and_template_overrides_it(qwen3_reranker_dir, trec_dir, tmp_path):
    from relscope.evaluation.job import run_rerank_job
    from relscope.evaluation.settings import RerankConfig

    found = run_rerank_job(RerankConfig(model=str(qwen3_reranker_dir), data=str(trec_dir), top_k=3), tmp_path / "a",
                           progress=False)
    assert (found["preset"], found["template"], found["max_length"]) == ("qwen3-reranker", "qwen3-reranker", 8192)
    chosen = run_rerank_job(RerankConfig(model=str(qwen3_reranker_dir), data=str(trec_dir), top_k=3,
                                         template="yes_no"), tmp_path / "b", progress=False)
    assert (chosen["preset"], chosen["template"], chosen["max_length"]) == (None, "yes_no", 512)


def test_the_analyses_read_a_preset_model_with_its_prompt_and_head(qwen3_reranker_dir, tmp_path):
    from relscope.analysis.examples import load_with_prompts
    from relscope.analysis.patching.job import load_patch_model
    from relscope.analysis.patching.settings import PatchSettings

    _, builder = load_with_prompts(str(qwen3_reranker_dir), None, None, None)
    assert builder.template.name == "qwen3-reranker"
    loaded, head, builder = load_patch_model(PatchSettings(groups="unused", model=str(qwen3_reranker_dir)), "cpu")
    assert builder.template.name == "qwen3-reranker"
    tokenizer = loaded.tokenizer
    assert [int(i) for i in head.answer_ids] == [tokenizer.convert_tokens_to_ids("yes"),
                                                 tokenizer.convert_tokens_to_ids("no")]
    with pytest.raises(ConfigError, match="one order"):  # another order asked for is refused, not ignored
        load_patch_model(PatchSettings(groups="unused", model=str(qwen3_reranker_dir),
                                       layout="query-document-instruction"), "cpu")
    with pytest.raises(ConfigError, match="query-block"):  # its query precedes the passage: that block is empty
        load_patch_model(PatchSettings(groups="unused", model=str(qwen3_reranker_dir), scores=True), "cpu")


def test_rerank_model_naming_an_adapter_preset_loads_it_on_its_base_with_its_head(tmp_path, trec_dir):
    """`relscope rerank --model <RankLLaMA>`: the id names a PEFT adapter; relscope loads it on the base its
    adapter_config names (the preset's base when it names none), with the preset's prompt and the trained head."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from relscope.evaluation.job import run_rerank_job
    from relscope.evaluation.settings import RerankConfig
    from relscope.models.adapters import load_trained

    tokenizer = preset_tokenizer("<s>", "sentencepiece")
    base = tiny_family_model("llama", len(tokenizer))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    peft = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=1),
                          LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["q_proj", "v_proj"]))
    adapter = tmp_path / "rankllama-v1-7b-lora-passage"
    peft.save_pretrained(adapter)
    metrics = run_rerank_job(RerankConfig(model=str(adapter), data=str(trec_dir), top_k=3), tmp_path / "out",
                             progress=False)
    assert (metrics["preset"], metrics["template"], metrics["max_length"]) == ("rankllama", "rankllama", 512)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["data"]["adapter"]["path"] == str(adapter / "adapter_model.safetensors")  # its bytes identify it

    from relscope.analysis.examples import load_with_prompts
    from relscope.analysis.patching.job import load_patch_model, preset_adapter
    from relscope.analysis.patching.settings import PatchSettings

    settings = PatchSettings(groups="unused", model=str(adapter))
    assert preset_adapter(settings) == str(adapter)  # the pair cache and the manifest identify the adapter
    assert preset_adapter(PatchSettings(groups="unused", model=str(tmp_path / "base"))) is None
    _, head, builder = load_patch_model(settings, "cpu")
    assert builder.template.name == "rankllama"
    assert torch.equal(head.score.weight, load_trained(adapter, merge=True)[1].score.weight)  # trained, not random
    with pytest.raises(ConfigError, match="published adapter"):  # probes/attention need base and adapter named
        load_with_prompts(str(adapter), None, None, None)


@pytest.mark.parametrize("name, kind, bos", [("mxbai-rerank-v2", "qwen", None), ("rankllama", "sentencepiece", "<s>")])
def test_one_call_tokenisation_would_differ_from_the_reference_where_units_do_not(name, kind, bos):
    """The tokenizers above do what the real ones do (Qwen merges ".\n"; Llama marks only a text's first word), so a
    prompt tokenised in one call differs from the reference's pieces: the units are what makes the tokens equal."""
    tokenizer = preset_tokenizer(bos, kind)
    template = get_template(PRESETS.get(name).template)
    builder = PromptBuilder(tokenizer, template, 512)
    text = builder.render(QUERY, [DOCS[0]])[0]
    one_call = tokenizer(text, add_special_tokens=True)["input_ids"]
    assert list(builder.build(QUERY, [DOCS[0]]).input_ids) != one_call
    if name == "rankllama":
        reference = tokenizer(f"query: {QUERY}", f"document: {''} {DOCS[0]}")["input_ids"]
    else:
        reference = mxbai_reference(tokenizer, QUERY, DOCS[0])[1]
    assert list(builder.build(QUERY, [DOCS[0]]).input_ids) == reference


def test_an_adapter_saved_as_a_pickle_loads_its_trained_head(tmp_path):
    """RankLLaMA's repositories ship adapter_model.bin (PEFT before safetensors): its score row must still be found, or
    the linear head would be refused (or, worse, random)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from relscope.models.adapters import external_classifier

    tokenizer = preset_tokenizer("<s>", "sentencepiece")
    tiny_family_model("llama", len(tokenizer)).save_pretrained(tmp_path / "base")
    peft = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=1),
                          LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["q_proj", "v_proj"]))
    adapter = tmp_path / "rankllama-v1-7b-lora-passage"
    peft.save_pretrained(adapter, safe_serialization=False)
    assert (adapter / "adapter_model.bin").is_file() and not (adapter / "adapter_model.safetensors").exists()
    classifier = external_classifier(adapter, "cpu")
    score = dict(peft.named_parameters())
    expected = next(v for k, v in score.items() if k.endswith("score.modules_to_save.default.weight"))
    assert torch.equal(classifier["weight"], expected.detach())


def test_an_adapter_in_the_hugging_face_cache_is_known_by_its_hub_id(tmp_path):
    """`adapter_folder` downloads a hub adapter into .../models--owner--name/snapshots/<commit>: its preset must be
    found by the hub id, not by the commit hash the folder is named after (before, it was read as a plain yes/no
    adapter)."""
    from relscope.models.adapters import _external_meta
    from relscope.prompts.presets import known_name

    snapshot = tmp_path / "hub" / "models--castorini--rankllama-v1-7b-lora-passage" / "snapshots" / ("a1" * 20)
    snapshot.mkdir(parents=True)
    (snapshot / "adapter_config.json").write_text('{"base_model_name_or_path": "meta-llama/Llama-2-7b-hf"}')
    assert known_name(str(snapshot)) == "castorini/rankllama-v1-7b-lora-passage"
    (tmp_path / "link").symlink_to(snapshot)  # a user's link into the cache
    assert preset_for(str(tmp_path / "link")).name == "rankllama"
    assert known_name(str(tmp_path / "hub")) == str(tmp_path / "hub")  # any other folder or id: as given
    assert known_name("castorini/rankllama-v1-7b-lora-passage") == "castorini/rankllama-v1-7b-lora-passage"
    for odd in ("x" * 5000, "~no-such-user-relscope/model"):  # no folder can be named so: the name as given
        assert known_name(odd) == odd and preset_for(odd) is None
    meta = _external_meta(snapshot, None, None, None)
    assert (meta["template"], meta["head"], meta["model"]) == ("rankllama", "linear", "meta-llama/Llama-2-7b-hf")
