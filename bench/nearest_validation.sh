#!/bin/bash
# Issue 20's atp-nearest on pairs it was not designed on: 20 NQ pairs (relevance-mi/nq.jsonl) in `relscope patch`'s
# default, document-first layout, every component, position group and head, exact patching against atp and then
# atp-nearest in one folder (the exact sweep is cached per pair and reused by the second). BENCHMARKS.md records the
# results; docs/results/nearest-nq/ keeps each run's validation table. Usage: bench/nearest_validation.sh [OUT]
set -euo pipefail
out=${1:-runs/nearest-nq}
for method in atp atp-nearest; do
  relscope patch smollm2-135m-instruct --groups "${RELSCOPE_DATA:-../shared/data}/relevance-mi/nq.jsonl" \
    --max-pairs 20 --heads --attribution "$method" --validate --out "$out" --quiet
  cp "$out/validation.md" "$out/validation-$method.md"
done
