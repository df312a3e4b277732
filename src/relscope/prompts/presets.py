"""Reranker presets: the published rerankers' own prompt, head and length, picked by model id.

A wrong newline in a hand-built prompt changes every score silently, so relscope carries each reranker's prompt as its
reference code writes it (relscope.prompts.templates, with the page and commit it was copied from) and reads the same
logits its code reads. `relscope rerank --model Qwen/Qwen3-Reranker-0.6B` and the analyses find the preset by the
model's name; --template / --head still choose otherwise.

    preset                 prompt (template)        head          reads                         reference score
    qwen3-reranker         system + user + think    yes_no        logit("yes") - logit("no")    sigmoid of it
    bge-reranker-v2-gemma  A: q / B: p / prompt     first_answer  logit("Yes")                  the logit
    mxbai-rerank-v2        Qwen chat + task prompt  yes_no        logit("1") - logit("0")       the difference
    rankllama              query: / document:       linear        the adapter's trained score   the logit

relscope always reports the score before any sigmoid (the same order, and a logit difference is what the analyses
patch). Padding: the references pad on the left (Qwen3, mxbai) or right (RankLLaMA); relscope reads the last real
token under either, with position ids counted from each prompt's own start, so the side changes no score.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal

from relscope.registry import Registry


@dataclass(frozen=True)
class RerankerPreset:
    """How one published reranker is scored: its template, its head, its length, and where they are documented."""

    name: str
    patterns: tuple[str, ...]  # fnmatch patterns on the model's name (the id's last part), case-insensitive
    template: str  # a registered template (relscope.prompts.templates)
    head: str  # a registered head (relscope.models.heads)
    max_length: int  # the reference's default prompt length
    padding_side: Literal["left", "right"]  # the reference's; informational (see the module docstring)
    score: str  # what the reference reports, for the docs
    source: str  # the model page
    # Presets over adapters (RankLLaMA): the id is a PEFT adapter with a trained head, loaded onto this base.
    base_model: str | None = None
    # Names the patterns match that are other models (Qwen3-Reranker-*-seq-cls: converted sequence classifiers).
    excludes: tuple[str, ...] = ()


PRESETS: Registry[RerankerPreset] = Registry("reranker preset")

PRESETS.register("qwen3-reranker", RerankerPreset(
    name="qwen3-reranker", patterns=("qwen3-reranker-*",), excludes=("*-seq-cls*",), template="qwen3-reranker",
    head="yes_no",
    max_length=8192, padding_side="left", score="sigmoid(logit yes - logit no) = P(yes)",
    source="https://huggingface.co/Qwen/Qwen3-Reranker-0.6B"))
PRESETS.register("bge-reranker-v2-gemma", RerankerPreset(
    name="bge-reranker-v2-gemma", patterns=("bge-reranker-v2-gemma",), template="bge-reranker-v2-gemma",
    head="first_answer", max_length=1024, padding_side="left", score='logit("Yes")',
    source="https://huggingface.co/BAAI/bge-reranker-v2-gemma"))
PRESETS.register("mxbai-rerank-v2", RerankerPreset(
    name="mxbai-rerank-v2", patterns=("mxbai-rerank-*-v2",), template="mxbai-rerank-v2", head="yes_no",
    max_length=8192, padding_side="left", score='logit("1") - logit("0")',
    source="https://huggingface.co/mixedbread-ai/mxbai-rerank-base-v2"))
PRESETS.register("rankllama", RerankerPreset(
    name="rankllama", patterns=("rankllama-v1-7b-lora-passage",), template="rankllama", head="linear",
    max_length=512, padding_side="right", score="the trained score head's logit",
    source="https://huggingface.co/castorini/rankllama-v1-7b-lora-passage", base_model="meta-llama/Llama-2-7b-hf"))


def known_name(model: str) -> str:
    """The name a model or adapter is known by: a Hugging Face cache snapshot folder
    (.../models--owner--name/snapshots/<commit>, where hub downloads land) by its hub id, anything else as given."""
    try:
        folder = Path(model).expanduser()
        snapshot = folder.resolve() if folder.is_dir() else None
    except (OSError, RuntimeError):  # a name no folder can have (too long, ~unknown-user): not a snapshot
        return model
    repo = snapshot.parent.parent.name if snapshot is not None and snapshot.parent.name == "snapshots" else ""
    return repo.removeprefix("models--").replace("--", "/") if repo.startswith("models--") else model


def preset_for(model: str | None) -> RerankerPreset | None:
    """The preset whose pattern matches the model's name (an id's last part, a folder's name, or a cache snapshot's
    hub id), or None."""
    if not model:
        return None
    name = PurePath(known_name(model).rstrip("/")).name.lower()
    for preset_name in PRESETS.names():
        preset = PRESETS.get(preset_name)
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in preset.patterns) and \
                not any(fnmatch.fnmatchcase(name, pattern) for pattern in preset.excludes):
            return preset
    return None
