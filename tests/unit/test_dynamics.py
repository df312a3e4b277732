"""`relscope dynamics`: the loss cliff, per-layer gradient norms and group means, against direct computations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from relscope.analysis.dynamics import group_means, layer_norms, phase_transition, read_curves, smooth
from relscope.cli import main
from relscope.errors import DataError


def test_the_cliff_is_found_where_the_loss_falls():
    steps = np.arange(1, 201)
    rng = np.random.default_rng(0)
    loss = np.where(steps < 120, 1.0, 0.2) + rng.normal(0, 0.05, len(steps))
    cliff = phase_transition(steps, loss, window=20)
    assert cliff.start_step < 120 <= cliff.end_step
    assert abs(cliff.step - 120) <= 10
    assert cliff.loss_before == pytest.approx(1.0, abs=0.1) and cliff.loss_after == pytest.approx(0.2, abs=0.1)


def test_smoothing_keeps_a_constant_and_its_edges():
    assert np.allclose(smooth(np.full(10, 3.0), 5), 3.0)


def test_layer_norm_is_the_norm_of_all_its_modules_and_nan_without_lora():
    norms = np.array([[[3.0, 4.0], [np.nan, np.nan], [1.0, np.nan]]])  # 1 step, 3 layers, 2 modules
    assert layer_norms(norms)[0, 0] == pytest.approx(5.0)
    assert np.isnan(layer_norms(norms)[0, 1])  # layer 1 was not adapted
    assert layer_norms(norms)[0, 2] == pytest.approx(1.0)


def test_group_means_split_the_layers_in_thirds():
    per_layer = np.arange(1.0, 7.0)[None, :]  # 6 layers: early 0-1, middle 2-3, late 4-5
    means = group_means(per_layer)
    assert means["early"][0] == 1.5 and means["middle"][0] == 3.5 and means["late"][0] == 5.5
    assert means["late/early"][0] == pytest.approx(5.5 / 1.5)


def test_dynamics_of_a_real_tiny_run(tiny_family_dir, tiny_groups, tmp_path, capsys):
    from relscope.config import from_mapping
    from relscope.training.config import TrainConfig
    from relscope.training.job import run_train_job

    config = from_mapping(TrainConfig, dict(model=str(tiny_family_dir("llama")), train=[str(tiny_groups)],
                                            negatives=2, max_length=96, max_steps=8, batch_size=2, save_steps=8,
                                            learning_rate=1e-2, report_to=[], lora={"rank": 4, "freeze": ["early"]}))
    run_train_job(config, tmp_path / "run", progress=False)
    assert main(["dynamics", str(tmp_path / "run"), "--window", "3", "--out", str(tmp_path / "dyn")]) == 0
    assert "steepest loss drop" in capsys.readouterr().out
    summary = json.loads((tmp_path / "dyn" / "summary.json").read_text())
    assert summary["grad_norms"]["steps"] == 8
    assert summary["grad_norms"]["mean_by_group"]["early"] is None  # frozen: no gradient at all
    curves = read_curves(tmp_path / "run")
    logged = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert curves["loss"].tolist() == logged
    for name in ("curves", "grad_norms", "grad_norms_row_normalised", "groups", "grad_norm_by_layer"):
        assert (tmp_path / "dyn" / f"{name}.png").is_file() or (tmp_path / "dyn" / f"{name}.csv").is_file()


def test_a_folder_without_a_log_is_named(tmp_path):
    with pytest.raises(DataError, match="log.jsonl: not found"):
        read_curves(tmp_path)


def test_two_cliffs_are_both_listed_and_after_skips_the_first():
    from relscope.analysis.dynamics import steepest_drops

    steps = np.arange(1, 301)
    loss = np.where(steps < 30, 0.9, 0.7) - np.where(steps < 200, 0.0, 0.5)  # a small early fall, a big late one
    drops = steepest_drops(steps, loss, window=10, count=2)
    assert 195 <= drops[0].step <= 205 and 25 <= drops[1].step <= 35
    assert drops[0].drop == pytest.approx(0.5, abs=0.01) and drops[1].drop == pytest.approx(0.2, abs=0.01)
    early_only = np.where(steps < 30, 0.9, 0.7) - np.where(steps < 200, 0.0, 0.1)
    assert phase_transition(steps, early_only, 10).step < 40
    assert phase_transition(steps, early_only, 10, after=100).step > 190


def test_the_held_out_accuracy_curve_is_summarised_and_drawn(tiny_family_dir, tiny_groups, tmp_path):
    """Study 001's eval-accuracy curve: what training logged at step 0 and every eval_steps, read back by dynamics."""
    import json

    from relscope.analysis.dynamics import analyse_dynamics
    from relscope.analysis.settings import DynamicsSettings
    from relscope.config import from_mapping
    from relscope.training.config import TrainConfig
    from relscope.training.job import run_train_job

    config = from_mapping(TrainConfig, dict(model=str(tiny_family_dir("llama")), train=[str(tiny_groups)],
                                            objective="pairwise", negatives=1, max_length=96, max_steps=4,
                                            batch_size=2, save_steps=2, eval_groups=2, report_to=[],
                                            lora={"rank": 4}))
    run_train_job(config, tmp_path / "run", progress=False)
    summary = analyse_dynamics(DynamicsSettings(run_dir=str(tmp_path / "run"), window=1), tmp_path / "dyn")
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    expected = [(r["step"], r["eval_accuracy"]) for r in logged if "eval_accuracy" in r]
    assert list(zip(summary["eval_accuracy"]["steps"], summary["eval_accuracy"]["accuracy"])) == expected
    assert expected[0][0] == 0 and (tmp_path / "dyn" / "curves.png").is_file()
