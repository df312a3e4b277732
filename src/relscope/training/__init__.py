"""LoRA fine-tuning of causal LMs as rerankers: objectives, PEFT targets, HF Trainer, checkpoints."""
