"""Data types and readers/writers for the formats the IR community uses."""

from relscope.data.groups import NegativePassage, TrainingGroup, read_groups, write_groups
from relscope.data.msmarco import read_texts, write_texts
from relscope.data.rankllm import read_rankllm, write_rankllm
from relscope.data.trec import read_qrels, read_run, write_qrels, write_run
from relscope.data.types import Qrels, Run, ScoredDoc, sort_run

__all__ = [
    "NegativePassage",
    "Qrels",
    "Run",
    "ScoredDoc",
    "TrainingGroup",
    "read_groups",
    "read_qrels",
    "read_rankllm",
    "read_run",
    "read_texts",
    "sort_run",
    "write_groups",
    "write_qrels",
    "write_rankllm",
    "write_run",
    "write_texts",
]
