"""Prompt templates and the tokenisation contract (segment spans, passage-only truncation)."""

from relscope.prompts.templates import TEMPLATES, PromptTemplate, get_template
from relscope.prompts.tokenize import POSITION_GROUPS, PromptBuilder, Span, TokenizedPrompt

__all__ = ["POSITION_GROUPS", "PromptBuilder", "PromptTemplate", "Span", "TEMPLATES", "TokenizedPrompt", "get_template"]
