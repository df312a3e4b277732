"""`relscope export`: a trained checkpoint as a folder the serving libraries load, scoring as relscope does.

The LoRA update is merged into the base weights (PEFT merge_and_unload), so no relscope and no PEFT are needed to
serve it:

    answer heads (yes_no, first_answer)  the merged causal LM; the score is logit(yes) - logit(no) at the prompt's
                                         last token (or logit(yes) alone), as relscope reads it
    linear head                          AutoModelForSequenceClassification with num_labels=1, its `score` row the
                                         trained head's weight. transformers' score layers have no bias: the
                                         exported score is relscope's minus the head's bias (a constant: the ranking
                                         is the same), written as `score_bias` in relscope_export.json

relscope_export.json holds the prompt with its {query} and {document} slots, whether to tokenise it with the
tokenizer's special tokens (as relscope does), the answer token ids and the bias. Where the tokenizer pads with a
token a prompt holds (the EOS), the classifier gets a pad token of its own, or it would read the token before it. Where
the installed sentence-transformers loads causal-LM rerankers (5.4 and later: its LogitScore module), the folder is
also a CrossEncoder: a chat template renders a (query, document) pair as relscope's prompt (checked at export to
tokenise to relscope's very tokens on probe pairs; no CrossEncoder is written when none does), a linear head's bias is
added back by a 1 x 1 Dense module, and the scores come out raw (an Identity activation, not the default sigmoid):
relscope's scores. relscope cuts long passages to max_length and keeps the
instruction; a CrossEncoder truncates the prompt's end: scores agree when the prompt fits.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from relscope.errors import ConfigError, ModelError
from relscope.evaluation.settings import ExportSettings
from relscope.models.heads import AnswerLogitHead, FirstAnswerHead, Head, LinearScoreHead
from relscope.models.load import LoadedModel
from relscope.prompts.tokenize import PromptBuilder

log = logging.getLogger(__name__)

EXPORT_FILE = "relscope_export.json"
PAD_TOKEN = "<|relscope_pad|>"  # added when the tokenizer's pad token can occur in a prompt (see _save_classifier)


def export_job(settings: ExportSettings, out: str | Path) -> dict[str, Any]:
    """Write the merged model (and a CrossEncoder where possible) to `out`, all or nothing; return the export info."""
    from relscope.models.adapters import load_trained
    from relscope.prompts.templates import get_template

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not an empty folder; export into a new folder")
    loaded, head, meta = load_trained(settings.checkpoint, dtype="float32", device="cpu", merge=True,
                                      model=settings.model)
    builder = PromptBuilder(loaded.tokenizer, get_template(meta["template"]), meta.get("max_length", 512))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        info = _write(loaded, head, builder, settings, tmp)
        (tmp / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _write(loaded: LoadedModel, head: Head, builder: PromptBuilder, settings: ExportSettings,
           folder: Path) -> dict[str, Any]:
    template = builder.template
    if template.kind != "pointwise":
        raise ConfigError(f"{settings.checkpoint}: its template {template.name!r} compares two passages; export "
                          "takes pointwise rerankers (a serving library scores one query-passage pair at a time)")
    info: dict[str, Any] = {"checkpoint": str(settings.checkpoint), "base_model": loaded.name,
                            "template": template.name, "prompt": prompt_pattern(builder),
                            # tokenise the filled prompt as relscope does: with the tokenizer's special tokens for a
                            # plain prompt (a BOS), without for a chat prompt (its markup is in the text)
                            "add_special_tokens": not builder.uses_chat,
                            # the pieces tokenised one by one (without special tokens; add_special_tokens then
                            # means once around the whole), if any
                            "units": [_escaped(unit) for unit in template.units],
                            "max_length": builder.max_length, "score_bias": 0.0}
    if isinstance(head, LinearScoreHead):
        info.update(kind="sequence-classification", head="linear",
                    score_bias=_save_classifier(loaded, head, builder, folder))
    elif isinstance(head, AnswerLogitHead):
        loaded.model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        single = isinstance(head, FirstAnswerHead)
        ids = list(builder.answer_ids[:1] if single else builder.answer_ids)
        info.update(kind="causal-lm", head="first_answer" if single else "answer_difference", answer_ids=ids,
                    answers=[loaded.tokenizer.decode([i]) for i in ids])
    else:
        raise ConfigError(f"{settings.checkpoint}: its {type(head).__name__} has no counterpart in transformers; "
                          "export takes linear and answer-word heads")
    info["cross_encoder"] = settings.cross_encoder and _save_cross_encoder(folder, builder, info)
    return info


def _save_classifier(loaded: LoadedModel, head: LinearScoreHead, builder: PromptBuilder, folder: Path) -> float:
    """The merged backbone under AutoModelForSequenceClassification (num_labels=1) with the trained head's row as its
    `score`; returns the head's bias, which transformers' bias-free score layer cannot hold."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = copy.deepcopy(loaded.tokenizer)
    loaded.model.save_pretrained(folder)  # the merged causal LM's weights: the classifier's backbone loads from them
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
    if classifier.score.bias is not None:
        raise ModelError(f"{type(classifier).__name__}'s score layer has a bias; relscope's export does not handle it")
    with torch.no_grad():
        classifier.score.weight.copy_(head.score.weight.detach().float().reshape(1, -1))
    # transformers' classifier reads the last token that is not padding: a pad id that prompts hold (the EOS that
    # the score template appends, when the tokenizer pads with EOS) would make it read the token before. A pad token
    # of its own then, whose embedding row no prompt ever reads.
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in builder.build("q", ["d"]).input_ids:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        if len(tokenizer) > classifier.get_input_embeddings().num_embeddings:  # never shrink a padded vocabulary
            classifier.resize_token_embeddings(len(tokenizer))
    classifier.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.save_pretrained(folder)
    for name in os.listdir(folder):  # only the classifier's files, not the causal LM's
        if name.endswith((".safetensors", ".json")) and name.startswith("model"):
            (folder / name).unlink()
    classifier.save_pretrained(folder)
    return float(head.score.bias.detach().float().item())


def prompt_pattern(builder: PromptBuilder) -> str:
    """The prompt as a Python format string with {query} and {document} slots (literal braces doubled)."""
    return "".join(_escaped(text) if kind == "literal" else "{" + kind + "}" for kind, text in builder.pieces())


def _escaped(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def cross_encoder_template(builder: PromptBuilder, before: str = "", after: str = "") -> str:
    """A chat template that renders a sentence-transformers (query, document) pair as relscope's prompt (the query
    and passage whitespace-normalised as relscope normalises them), `before` and `after` written around it."""
    def role(name: str) -> str:
        return (f'{{%- set m = (messages | selectattr("role", "eq", "{name}") | first).content -%}}'
                '{%- if m is not string %}{% set m = m[0].text %}{% endif -%}'
                '{{- m.split() | join(" ") -}}')

    def raw(text: str) -> str:
        if "endraw" in text:
            raise ModelError("the prompt holds the word 'endraw'; it cannot be written as a chat template")
        return "{% raw %}" + text + "{% endraw %}" if text else ""

    body = "".join(raw(text) if kind == "literal" else role(kind) for kind, text in builder.pieces())
    return raw(before) + body + raw(after)


# Pairs on which an export's CrossEncoder template must tokenise exactly as relscope does. Both sides collapse
# whitespace, so what they test is the characters at the ends of the query and the passage (punctuation before the
# template's newline, the word after a special token)
PROBES = (("what is the capital of france?", "Paris is the capital of France.\nIt is  large."),
          ("q", " leading space"), ("a  b", "end."))


def matching_cross_encoder_template(builder: PromptBuilder) -> str | None:
    """The chat template whose renders of PROBES tokenise (without special tokens, as sentence-transformers does) to
    relscope's own tokens; the special tokens relscope's tokenizer adds (a BOS) are written as text, with or without
    a following space (tokenizers differ in how they mark the word after a special token). None: no template does
    (e.g. a prompt tokenised in units), and no CrossEncoder is written."""
    tokenizer = builder.tokenizer
    before_ids, after_ids = builder.special_affix_ids()
    before, after = tokenizer.decode(before_ids), tokenizer.decode(after_ids)
    for candidate in dict.fromkeys([before, before + " "] if before else [before]):
        template = cross_encoder_template(builder, candidate, after)
        if all(_rendered_ids(tokenizer, template, q, d) == list(builder.build(q, [d]).input_ids) for q, d in PROBES):
            return template
    return None


def _rendered_ids(tokenizer, template: str, query: str, document: str) -> list[int]:
    messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _save_cross_encoder(folder: Path, builder: PromptBuilder, info: dict[str, Any]) -> bool:
    """Make `folder` a CrossEncoder too, when sentence-transformers (5.4 or later) is installed; whether it did."""
    try:
        from sentence_transformers import CrossEncoder
        from sentence_transformers.base.modules import Dense, Transformer
        from sentence_transformers.cross_encoder.modules.logit_score import LogitScore
    except ImportError:
        log.info("sentence-transformers with causal-LM rerankers (5.4 or later) is not installed: no CrossEncoder "
                 "files written; the folder loads with transformers")
        return False
    chat_template = matching_cross_encoder_template(builder)
    if chat_template is None:
        log.warning("no chat template reproduces relscope's tokens for this prompt (%s): no CrossEncoder files "
                    "written; relscope_export.json says how to tokenise it", builder.template.name)
        return False
    task = "sequence-classification" if info["kind"] == "sequence-classification" else "text-generation"
    transformer = Transformer(str(folder), transformer_task=task, processor_kwargs={"chat_template": chat_template})
    modules: list[torch.nn.Module] = [transformer]
    if task == "text-generation":
        ids = info["answer_ids"]
        modules.append(LogitScore(true_token_id=ids[0], false_token_id=ids[1] if len(ids) > 1 else None))
    else:  # the head's bias, which the classifier's score layer cannot hold: 1 x score + bias, in the CrossEncoder
        modules.append(Dense(1, 1, bias=True, activation_function=torch.nn.Identity(),
                             init_weight=torch.ones(1, 1), init_bias=torch.tensor([info["score_bias"]]),
                             module_input_name="scores"))
    model = CrossEncoder(modules=modules, activation_fn=torch.nn.Identity(), device="cpu")
    model.save(str(folder))
    return True
