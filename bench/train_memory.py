"""Peak memory and seconds a step of real `relscope train` runs: the old listwise recipe beside each memory lever.

Each variant is a fresh `relscope train` process on the DL21 + DL23 groups for --steps steps (no checkpoint
before the end); its peak RSS comes from the kernel (os.wait4), its seconds a step from the run's log.jsonl
(`step_seconds`, the records after the first three), and its memory growth from the log's `rss_gib` (the
least-squares slope of resident memory over the steps from 10 on, per 100 steps: whether memory keeps climbing
after the first batches; a slope over a few dozen steps says nothing about where a long run levels off). Baseline:
configs/train-smollm2-listwise.yaml as it stands.

    python bench/train_memory.py [--steps 40] [--out runs/bench-train-memory]

Run it alone: two torch jobs on two cores slow each other many times over.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

LISTWISE = "configs/train-smollm2-listwise.yaml"
GRADED = "configs/train-smollm2-graded.yaml"
UPPER_LAYERS = "lora.layers=[" + ",".join(map(str, range(10, 30))) + "]"  # SmolLM2's upper two thirds
VARIANTS = {  # name -> (config, --set overrides); the graded config adapts every layer, padded to a multiple of 32
    "listwise recipe (baseline)": (LISTWISE, []),
    "+ LoRA dropout 0": (LISTWISE, ["lora.dropout=0.0"]),
    "+ dropout 0, gradient checkpointing": (LISTWISE, ["lora.dropout=0.0", "gradient_checkpointing=true"]),
    "graded, padded to the longest": (GRADED, ["pad_to_multiple_of=1"]),
    "graded, layers 10-29 only": (GRADED, [UPPER_LAYERS]),
    "graded recipe (configs/train-smollm2-graded.yaml)": (GRADED, []),
}
GROWTH_FROM = 10  # the step after which resident memory is compared: the first batches have each seen a new shape


def run(config: str, overrides: list[str], out: Path, steps: int) -> tuple[float, float, float, int, int]:
    """(peak RSS GiB, RSS growth GiB per 100 steps, seconds a step, real tokens a step, padded tokens a step) of one
    short training run."""
    shutil.rmtree(out, ignore_errors=True)
    sets = [f"max_steps={steps}", f"save_steps={steps}", "warmup_steps=2", *overrides]
    command = [str(Path(sys.executable).parent / "relscope"), "train", "--config", config, "--out", str(out),
               "--no-resume", "--quiet", *(arg for item in sets for arg in ("--set", item))]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed (status {status})")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    records = [r for r in records if "step_seconds" in r]
    after = [r for r in records if r["step"] >= GROWTH_FROM]  # least squares: one noisy sample decides nothing
    growth = statistics.linear_regression([r["step"] for r in after], [r["rss_gib"] for r in after]).slope * 100
    records = records[3:]
    mean = lambda key: sum(r[key] for r in records) / len(records)  # noqa: E731
    return (usage.ru_maxrss / 2**20, growth, mean("step_seconds"), round(mean("tokens")),
            round(mean("padded_tokens")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40,
                        help=f"at least {GROWTH_FROM + 5}: the first three steps are not timed, and memory growth is "
                             f"read from step {GROWTH_FROM} on")
    parser.add_argument("--out", default="runs/bench-train-memory")
    args = parser.parse_args()
    if args.steps < GROWTH_FROM + 5:
        parser.error(f"--steps must be at least {GROWTH_FROM + 5} (the first three steps warm up and are not timed; "
                     f"memory growth is read from step {GROWTH_FROM} on)")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.steps} steps each")
    base = None
    for index, (name, (config, overrides)) in enumerate(VARIANTS.items()):
        rss, growth, seconds, tokens, padded = run(config, overrides, Path(args.out) / f"variant-{index}", args.steps)
        base = base or (rss, seconds)
        print(f"{name:<50} peak RSS {rss:5.2f} GiB ({rss / base[0]:4.2f}x), {growth:+5.2f} GiB/100 steps  "
              f"{seconds:5.2f} s/step ({base[1] / seconds:4.2f}x speed)  {tokens} tokens, {padded} padded a step",
              flush=True)


if __name__ == "__main__":
    main()
