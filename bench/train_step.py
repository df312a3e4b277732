"""Training-step time: relscope's forward + backward vs the usual full-logits LoRA step, same run, same batch.

Baseline: the PEFT model's full causal-LM forward (logits over the whole vocabulary at
every position), logit(yes) - logit(no) read at the last token, fp32.
relscope: the backbone only, the two answer rows at the last token (RerankerModule),
in fp32 and under bf16 autocast (`bf16: "yes"` in a train config).
All three see the same LoRA (rank 16, every projection), the same prompts (a batch of
4 real DL21 groups x 4 passages, yes/no template, max_length 192) and the same loss.
Then the cost of per-layer gradient-norm logging (GradNormRecorder.record, what `relscope train` runs every
optimizer step) against the bf16 step, timed alone on the gradients that step left.

    python bench/train_step.py [--steps 3] [--groups 4]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from relscope.data.dataset import data_root
from relscope.data.training import load_training_groups
from relscope.models.heads import build_head
from relscope.models.load import load_model
from relscope.models.lora import LoraSettings, apply_lora
from relscope.models.specs.base import num_layers
from relscope.prompts.templates import get_template
from relscope.prompts.tokenize import PromptBuilder
from relscope.training.callbacks import GradNormRecorder
from relscope.training.data import Draw, GroupCollator
from relscope.training.module import RerankerModule
from relscope.training.objectives import OBJECTIVES


def time_steps(step, steps: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--groups", type=int, default=4)
    args = parser.parse_args()

    objective = OBJECTIVES.get("yes_no")
    groups = load_training_groups((str(data_root() / "trec-dl-2021"),), negatives=3)
    loaded = load_model("smollm2-135m-instruct", device="cpu")
    builder = PromptBuilder(loaded.tokenizer, get_template("yes_no"), 192)
    batch = GroupCollator(groups, objective, builder, 3, loaded.tokenizer.pad_token_id)(
        [Draw(i, 0) for i in range(args.groups)])
    peft_model, sites = apply_lora(loaded.model, loaded.spec, LoraSettings(rank=16, alpha=32, dropout=0.0))
    module = RerankerModule(peft_model, loaded.spec, build_head("yes_no", peft_model, builder)).train()
    yes, no = builder.answer_ids
    rows = torch.arange(len(batch["last"]))

    def naive() -> None:
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        picked = logits[rows, batch["last"]]
        objective.loss((picked[:, yes] - picked[:, no]).view(args.groups, -1)).loss.backward()

    def relscope(bf16: bool):
        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                scores = module(**batch)
            objective.loss(scores.view(args.groups, -1)).loss.backward()
        return step

    tokens = int(batch["attention_mask"].sum())
    machine = platform.processor() or platform.machine()
    print(f"{machine}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(rows)} prompts, {tokens} tokens ({batch['input_ids'].numel()} padded) per step")
    results = {"naive full-logits fp32": time_steps(naive, args.steps),
               "relscope fp32": time_steps(relscope(False), args.steps),
               "relscope bf16 autocast": time_steps(relscope(True), args.steps)}
    base = results["naive full-logits fp32"]
    for name, seconds in results.items():
        print(f"{name:<24} {seconds:6.2f} s/step  {tokens / seconds:7.1f} tokens/s  {base / seconds:5.2f}x")

    recorder = GradNormRecorder(module.base, sites, num_layers(loaded.model.config), module.head)
    counter = iter(range(1, 10**6))
    logging = time_steps(lambda: recorder.record(next(counter)), max(args.steps, 20))  # the step's grads are there
    step = results["relscope bf16 autocast"]
    print(f"gradient-norm logging    {logging * 1000:6.1f} ms/step  = {logging / step:.2%} of the bf16 step "
          f"({len(sites)} LoRA sites)")


if __name__ == "__main__":
    main()
