"""Rerank a first-stage run and evaluate it the TREC way (ir_measures)."""
