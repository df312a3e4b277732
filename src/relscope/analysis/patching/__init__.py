"""Activation patching of relevance judgments (issue 6): clean/corrupted pairs, hook sites, the patching engine."""
