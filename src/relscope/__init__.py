"""relscope: how does relevance emerge inside an LLM reranker?

The public API is imported lazily so that `import relscope` stays cheap
(torch and transformers load only when a model is needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "relscope.models.load",
    "PromptBuilder": "relscope.prompts.tokenize",
    "TEMPLATES": "relscope.prompts.templates",
    "Scorer": "relscope.models.scoring",
    "build_head": "relscope.models.heads",
    "rerank": "relscope.evaluation.rerank",
    "evaluate_run": "relscope.evaluation.metrics",
    "RelscopeError": "relscope.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'relscope' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
