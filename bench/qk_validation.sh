#!/bin/bash
# Issue 20's query/key sites on SmolLM2 (20 MS MARCO pairs): exact patching against atp, atp-qk and atp-star, in one
# folder (the exact sweep is cached per pair and reused by the later estimators). BENCHMARKS.md records the results;
# docs/results/qk-smollm2/ keeps each run's validation table. Usage: bench/qk_validation.sh [OUT]
set -euo pipefail
out=${1:-runs/qk-smollm2}
for method in atp atp-qk atp-star; do
  relscope patch smollm2-135m-instruct --max-pairs 20 --components attn --positions last --qk \
    --attribution "$method" --validate --out "$out" --quiet
  cp "$out/validation.md" "$out/validation-$method.md"
done
