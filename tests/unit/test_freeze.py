"""`relscope freeze`: which layers train in each variant, and a real (tiny) sweep measured like a rerank."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from relscope.analysis.freeze import freeze_list, trainable_layers
from relscope.cli import main
from relscope.errors import ConfigError
from relscope.models.lora import resolve_freeze


@pytest.mark.parametrize("variant,expected", [
    ("early", set(range(0, 10))), ("middle", set(range(10, 20))), ("late", set(range(20, 30))),
    ("early+middle", set(range(0, 20))), ("all", set(range(30))), ("5-14", set(range(5, 15))),
    ("0.5-1.0", set(range(15, 30))),
])
def test_the_freeze_list_leaves_exactly_the_variant_trainable(variant, expected):
    assert trainable_layers(variant, 30) == expected
    assert set(range(30)) - resolve_freeze(freeze_list(variant, 30), 30) == expected


def test_an_unknown_variant_is_named():
    with pytest.raises(ConfigError, match="'top'"):
        trainable_layers("top", 30)


def test_freeze_sweep_trains_each_variant_and_measures_it(tiny_family_dir, tiny_groups, trec_dir, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {tiny_family_dir('llama')}\ntrain: [{tiny_groups}]\nnegatives: 2\nmax_length: 96\n"
                      "max_steps: 3\nbatch_size: 2\nsave_steps: 3\nlearning_rate: 5.0e-2\nreport_to: []\n"
                      "lora: {rank: 4}\n")
    out = tmp_path / "freeze"
    assert main(["freeze", "--config", str(config), "--variants", "late", "all", "--data", str(trec_dir),
                 "--top-k", "3", "--out", str(out)]) == 0
    weights = load_file(out / "train-late" / "checkpoint-3" / "adapter_model.safetensors")
    for name, value in weights.items():
        if "lora_B" in name:  # 3 layers: only layer 2 (late) may have moved from 0
            assert bool(value.abs().sum() > 0) == (".layers.2." in name), name
    lines = (out / "freeze.csv").read_text().splitlines()
    assert lines[0].startswith("trainable,layers,train accuracy (last 10%),nDCG@10") and len(lines) == 3
    assert (out / "freeze.png").is_file()
    per_query = (out / "freeze.per_query.csv").read_text().splitlines()
    assert per_query[0].startswith("trainable,qid,nDCG@10")
    assert {line.split(",")[0] for line in per_query[1:]} == {"late", "all"}


def test_freeze_variants_are_scored_by_held_out_accuracy_when_groups_are_held_out(tiny_family_dir, tiny_groups,
                                                                                  trec_dir, tmp_path):
    """Study 001 scores each freezing variant by its eval accuracy on held-out pairs: the table leads with it."""
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {tiny_family_dir('llama')}\ntrain: [{tiny_groups}]\nobjective: pairwise\n"
                      "negatives: 1\nmax_length: 96\nmax_steps: 2\nbatch_size: 2\nsave_steps: 2\neval_groups: 2\n"
                      "report_to: []\nlora: {rank: 4}\n")
    out = tmp_path / "freeze"
    assert main(["freeze", "--config", str(config), "--variants", "all", "--data", str(trec_dir), "--top-k", "3",
                 "--out", str(out)]) == 0
    header, row = (out / "freeze.csv").read_text().splitlines()
    assert header.startswith("trainable,layers,held-out accuracy,")
    logged = [r for r in (out / "train-all" / "log.jsonl").read_text().splitlines() if "eval_accuracy" in r]
    assert float(row.split(",")[2]) == __import__("json").loads(logged[-1])["eval_accuracy"]
