"""`relscope lora ...` on a tiny trained run: every output written, the numbers tied to direct computations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from relscope.analysis import anatomy
from relscope.analysis.settings import AblateSettings, CheckpointsSettings, StatsSettings, SweepRankSettings
from relscope.cli import main
from relscope.config import dump_yaml, from_mapping
from relscope.errors import ConfigError, ModelError
from relscope.evaluation.job import run_rerank_job
from relscope.evaluation.settings import RerankConfig
from relscope.training.config import TrainConfig
from relscope.training.job import run_train_job


@pytest.fixture
def trained(tiny_family_dir, tiny_groups, tmp_path) -> Path:
    config = from_mapping(TrainConfig, dict(model=str(tiny_family_dir("llama")), train=[str(tiny_groups)], negatives=2,
                                            max_length=96, max_steps=4, batch_size=2, save_steps=2,
                                            learning_rate=2e-2, report_to=[], lora={"rank": 4, "dropout": 0.0}))
    run_train_job(config, tmp_path / "run", progress=False)
    return tmp_path / "run"


def _dev(trec_dir: Path) -> dict:
    """The dev run's fields of a job's settings."""
    return {"data": str(trec_dir), "top_k": 4}


def _checkpoints(run: Path, out: Path, trec_dir: Path) -> list[dict]:
    return anatomy.evaluate_checkpoints(CheckpointsSettings(str(run), **_dev(trec_dir)), out)


def _ablate(adapter: Path, out: Path, variants: list[str], trec_dir: Path) -> list[dict]:
    return anatomy.ablate(AblateSettings(str(adapter), tuple(variants), **_dev(trec_dir)), out)


def _outputs(folder: Path, name: str) -> None:
    for suffix in (".csv", ".md", ".png"):
        assert (folder / f"{name}{suffix}").stat().st_size > 0
    assert json.loads((folder / "manifest.json").read_text())["versions"]["relscope"]


def test_checkpoints_table_matches_reranking_each_checkpoint(trained, trec_dir, tmp_path):
    rows = _checkpoints(trained, tmp_path / "ck", trec_dir)
    assert [r["step"] for r in rows] == [0, 2, 4]  # step 0: the base model judging zero-shot
    direct = run_rerank_job(RerankConfig(adapter=str(trained / "checkpoint-4"), data=str(trec_dir), top_k=4),
                            tmp_path / "rr", progress=False)
    assert rows[-1]["nDCG@10"] == pytest.approx(direct["reranked"]["nDCG@10"])
    base_model = json.loads((trained / "checkpoint-2" / "relscope.json").read_text())["model"]
    zero_shot = run_rerank_job(RerankConfig(model=base_model, data=str(trec_dir), top_k=4), tmp_path / "zs",
                               progress=False)
    assert rows[0]["nDCG@10"] == pytest.approx(zero_shot["reranked"]["nDCG@10"])
    assert sum(r["converged"] == "yes" for r in rows) == 1
    _outputs(tmp_path / "ck", "checkpoints")


def _read_csv(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


def test_checkpoints_per_query_file_is_each_checkpoints_own_reranking(trained, trec_dir, tmp_path):
    rows = _checkpoints(trained, tmp_path / "ck", trec_dir)
    long = _read_csv(tmp_path / "ck" / "checkpoints.per_query.csv")
    assert sorted({int(r["step"]) for r in long}) == [r["step"] for r in rows]
    run_rerank_job(RerankConfig(adapter=str(trained / "checkpoint-4"), data=str(trec_dir), top_k=4),
                   tmp_path / "rr", progress=False)
    direct = {r["qid"]: float(r["reranked:nDCG@10"]) for r in _read_csv(tmp_path / "rr" / "per_query.csv")}
    last = {r["qid"]: float(r["nDCG@10"]) for r in long if r["step"] == "4"}
    assert last == pytest.approx(direct, abs=1e-4)
    assert sum(last.values()) / len(last) == pytest.approx(rows[-1]["nDCG@10"], abs=1e-4)


def test_ablation_share_of_all_is_each_variants_ndcg_over_alls_with_a_paired_interval(trained, trec_dir, tmp_path):
    rows = _ablate(trained / "checkpoint-4", tmp_path / "ab", ["none", "all", "down", "all@0.0-1.0"], trec_dir)
    by_name = {r["keep LoRA in"]: r for r in rows}
    for same in ("all", "all@0.0-1.0"):  # the same sites as all: exactly 1 only when the resample is paired
        assert (by_name[same]["share of all"], by_name[same]["share 95% low"],
                by_name[same]["share 95% high"]) == (1.0, 1.0, 1.0)
    for name in ("none", "down"):
        row = by_name[name]
        assert row["share of all"] == pytest.approx(row["nDCG@10"] / by_name["all"]["nDCG@10"])
        assert row["share 95% low"] <= row["share of all"] <= row["share 95% high"]
    long = _read_csv(tmp_path / "ab" / "ablation.per_query.csv")
    assert {r["keep LoRA in"] for r in long} == {"none", "all", "down", "all@0.0-1.0"}
    # 000's claims whose two variants ran, as paired differences: here up+gate was not run, so none
    assert not (tmp_path / "ab" / "ablation_contrasts.csv").exists()
    _ablate(trained / "checkpoint-4", tmp_path / "ab3", ["up+gate", "down"], trec_dir)
    (contrast,) = _read_csv(tmp_path / "ab3" / "ablation_contrasts.csv")
    assert (contrast["first"], contrast["second"]) == ("up+gate", "down")
    long = _read_csv(tmp_path / "ab3" / "ablation.per_query.csv")
    gaps = [float(a["nDCG@10"]) - float(b["nDCG@10"]) for a, b in zip(long[:len(long) // 2], long[len(long) // 2:])]
    assert float(contrast["difference"]) == pytest.approx(sum(gaps) / len(gaps), abs=1e-3)
    assert float(contrast["95% low"]) <= float(contrast["difference"]) <= float(contrast["95% high"])
    # without an "all" row there is nothing to take a share of: no such column
    rows = _ablate(trained / "checkpoint-4", tmp_path / "ab2", ["none", "down"], trec_dir)
    assert "share of all" not in rows[0]


def test_convergence_step_is_the_first_within_epsilon():
    assert anatomy.convergence_step([0, 100, 200, 300], [0.30, 0.49, 0.51, 0.50], 0.02) == 100
    assert anatomy.convergence_step([0, 100, 200, 300], [0.30, 0.49, 0.51, 0.50], 0.0) == 200


def test_ablation_table_ends_are_the_base_model_and_the_adapter(trained, trec_dir, tmp_path):
    adapter = trained / "checkpoint-4"
    rows = _ablate(adapter, tmp_path / "ab", ["none", "all", "mlp-only", "q+v@0-1", "all@0.5-1.0"], trec_dir)
    by_name = {r["keep LoRA in"]: r for r in rows}
    checkpoints = _checkpoints(trained, tmp_path / "ck", trec_dir)
    assert by_name["none"]["nDCG@10"] == pytest.approx(checkpoints[0]["nDCG@10"])  # = base model
    assert by_name["all"]["nDCG@10"] == pytest.approx(checkpoints[-1]["nDCG@10"])  # = adapter
    assert by_name["q+v@0-1"]["sites kept"] == "4/21"
    assert by_name["all@0.5-1.0"]["sites kept"] == "7/21"  # 1.5 rounds to layer 2 of 0-2
    _outputs(tmp_path / "ab", "ablation")


def test_bad_variant_fails_before_scoring(trained, trec_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown module 'ffn'"):
        _ablate(trained / "checkpoint-4", tmp_path / "ab", ["ffn"], trec_dir)
    with pytest.raises(ConfigError, match="outside 0..2"):
        _ablate(trained / "checkpoint-4", tmp_path / "ab", ["all@5-15"], trec_dir)


def test_stats_cover_every_adapted_module(trained, tmp_path):
    rows = anatomy.adapter_stats(StatsSettings(str(trained / "checkpoint-4")), tmp_path / "st")
    assert len(rows) == 3 * 7
    assert all(r["frobenius"] > 0 and 1.0 <= r["effective_rank"] <= 4.0 for r in rows)
    _outputs(tmp_path / "st", "delta_stats")
    assert (tmp_path / "st" / "effective_rank.png").is_file() and (tmp_path / "st" / "spectra.png").is_file()


def test_external_peft_adapter_loads_and_a_foreign_one_is_refused(trained, tiny_family_dir, tmp_path):
    external = tmp_path / "external"
    shutil.copytree(trained / "checkpoint-4", external)
    (external / "relscope.json").unlink()  # a plain PEFT adapter folder now
    rows = anatomy.adapter_stats(StatsSettings(str(external)), tmp_path / "st")
    assert len(rows) == 21
    with pytest.raises(ModelError, match="does not fit"):
        anatomy.adapter_stats(StatsSettings(str(external), model=str(tiny_family_dir("gpt_neox"))), tmp_path / "st2")


def test_sweep_rank_trains_each_rank_and_tabulates(tiny_family_dir, tiny_groups, trec_dir, tmp_path):
    config = from_mapping(TrainConfig, dict(model=str(tiny_family_dir("llama")), train=[str(tiny_groups)],
                                            negatives=2, max_length=96, max_steps=2, batch_size=2, save_steps=1,
                                            report_to=[], lora={"rank": 2, "alpha": 4}))
    path = tmp_path / "train.yaml"
    path.write_text(dump_yaml(config))
    settings = SweepRankSettings(config=str(path), ranks=(1, 4), **_dev(trec_dir))
    rows = anatomy.sweep_rank(settings, tmp_path / "sw", progress=False)
    assert [(r["rank"], r["alpha"]) for r in rows] == [(1, 2.0), (4, 8.0)]
    assert all(r["best step"] in (1, 2) for r in rows)
    _outputs(tmp_path / "sw", "rank_sweep")


def test_cli_lora_stats_checkpoints_and_ablate(trained, trec_dir, tmp_path, capsys):
    """Every lora job through the CLI (paths arrive as strings there)."""
    assert main(["lora", "stats", str(trained / "checkpoint-2"), "--out", str(tmp_path / "s")]) == 0
    assert main(["lora", "ablate", str(trained / "checkpoint-2"), "--variants", "none", "all", "--data", str(trec_dir),
                 "--top-k", "3", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "ablation.csv").is_file()
    assert main(["lora", "checkpoints", str(trained), "--data", str(trec_dir), "--top-k", "3",
                 "--out", str(tmp_path / "c")]) == 0
    assert "| step |" in capsys.readouterr().out
    assert main(["lora", "checkpoints", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint-<step>/" in capsys.readouterr().err
