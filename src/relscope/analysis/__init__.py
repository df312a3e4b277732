"""Opening rerankers up: LoRA surgery, probes, attention, activation patching."""
