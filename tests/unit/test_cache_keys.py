"""Caches keyed on what a model is, not where it lies (bug 9): an adapter retrained into the same folder, or a base
model rewritten in place, must never return the cached numbers of the old weights."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_model, tiny_tokenizer

from relscope.analysis.anatomy import sweep_rank
from relscope.analysis.patching.job import PatchSettings, patch_job
from relscope.analysis.probe import probe_job
from relscope.analysis.settings import ProbeSettings, SweepRankSettings
from relscope.config import dump_yaml, from_mapping
from relscope.errors import ConfigError
from relscope.training.config import TrainConfig
from relscope.training.job import run_train_job


def _config(model: str, groups: Path, seed: int = 0, learning_rate: float = 5e-2) -> TrainConfig:
    return from_mapping(TrainConfig, dict(model=model, train=[str(groups)], negatives=2, max_length=96, max_steps=2,
                                          batch_size=2, save_steps=2, learning_rate=learning_rate, seed=seed,
                                          report_to=[], lora={"rank": 4, "dropout": 0.0}))


def _train(model: str, groups: Path, out: Path, seed: int, learning_rate: float) -> Path:
    """Train into `out` from scratch (whatever was there is removed first, as a user retraining would)."""
    shutil.rmtree(out, ignore_errors=True)
    run_train_job(_config(model, groups, seed, learning_rate), out, progress=False)
    return out / "checkpoint-2"


def _save_tiny(folder: Path, seed: int) -> Path:
    tiny_model("llama", seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _probe(out: Path, groups: Path, model: str, adapter: str | None) -> None:
    probe_job(ProbeSettings(model, adapter, str(groups), max_groups=6, folds=2, max_length=96), out)


def _patch(out: Path, groups: Path, model: str, adapter: Path | None) -> dict:
    settings = PatchSettings(groups=str(groups), model=model, adapter=str(adapter) if adapter else None, max_pairs=2,
                             min_gap=0.0, components=("mlp",), max_length=96)
    patch_job(settings, out, progress=False)
    with np.load(out / "ie.npz") as saved:
        return {k: saved[k] for k in ("ie", "ld_clean", "ld_corrupted")}


def test_patching_an_adapter_retrained_in_the_same_folder_recomputes_its_pairs(tiny_family_dir, tiny_groups, tmp_path):
    """Bug 9: the patch pair cache was keyed on the adapter's path, so a retrained adapter got the old numbers."""
    model = str(tiny_family_dir("llama"))
    adapter = _train(model, tiny_groups, tmp_path / "run", seed=1, learning_rate=5e-2)
    first = _patch(tmp_path / "patch", tiny_groups, model, adapter)
    assert _train(model, tiny_groups, tmp_path / "run", seed=2, learning_rate=2e-1) == adapter  # same folder
    again = _patch(tmp_path / "patch", tiny_groups, model, adapter)
    fresh = _patch(tmp_path / "fresh", tiny_groups, model, adapter)  # no cache at all
    for name in first:
        np.testing.assert_array_equal(again[name], fresh[name])
    assert not np.allclose(again["ld_clean"], first["ld_clean"])  # the new weights do judge otherwise


def test_probe_states_of_an_adapter_retrained_in_the_same_folder_are_recomputed(tiny_family_dir, tiny_groups,
                                                                                tmp_path):
    """Bug 9: probe states were cached under the adapter's path, so a retrained adapter was probed as the old one."""
    model = str(tiny_family_dir("llama"))
    adapter = _train(model, tiny_groups, tmp_path / "run", seed=1, learning_rate=5e-2)

    def tuned_states(out: Path) -> np.ndarray:
        _probe(out, tiny_groups, model, str(adapter))
        with np.load(out / "states_tuned.npz") as saved:
            return saved["states"]

    first = tuned_states(tmp_path / "probe")
    _train(model, tiny_groups, tmp_path / "run", seed=2, learning_rate=2e-1)
    again, fresh = tuned_states(tmp_path / "probe"), tuned_states(tmp_path / "fresh")
    np.testing.assert_array_equal(again, fresh)
    assert not np.allclose(again, first)


def test_a_base_model_rewritten_in_place_is_not_served_from_the_caches(tiny_groups, tmp_path):
    """Bug 9 (same class): a base model folder overwritten with other weights misses both caches."""
    model = _save_tiny(tmp_path / "base", seed=0)
    first = _patch(tmp_path / "patch", tiny_groups, str(model), None)
    _probe(tmp_path / "probe", tiny_groups, str(model), None)
    _save_tiny(model, seed=1)
    again = _patch(tmp_path / "patch", tiny_groups, str(model), None)
    _probe(tmp_path / "probe", tiny_groups, str(model), None)
    _probe(tmp_path / "fresh", tiny_groups, str(model), None)
    assert not np.allclose(again["ld_clean"], first["ld_clean"])
    np.testing.assert_array_equal(np.load(tmp_path / "probe" / "states_base.npz")["states"],
                                  np.load(tmp_path / "fresh" / "states_base.npz")["states"])


def test_the_content_digest_follows_the_weights_not_the_path_or_the_trainer_state(tmp_path):
    """Bug 9: the digest reads the weight, head and config files; a copy elsewhere has the same digest."""
    from relscope.manifest import content_digest

    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    for name, data in (("adapter_model.safetensors", b"w1"), ("head.safetensors", b"h1"),
                       ("adapter_config.json", b"{}"), ("optimizer.pt", b"o1"), ("trainer_state.json", b"{}")):
        (folder / name).write_bytes(data)
    digest = content_digest(folder)
    copy = shutil.copytree(folder, tmp_path / "elsewhere")
    assert content_digest(copy) == digest
    (copy / "optimizer.pt").write_bytes(b"o2")  # optimiser state does not change what the adapter computes
    assert content_digest(copy) == digest
    for name in ("adapter_model.safetensors", "head.safetensors", "adapter_config.json"):
        changed = shutil.copytree(folder, tmp_path / f"changed-{name}")
        (changed / name).write_bytes(b"other")
        assert content_digest(changed) != digest, name
    assert content_digest(None) is None


def test_a_rank_sweep_never_reports_a_run_that_another_config_left_in_its_folder(tiny_family_dir, tiny_groups,
                                                                                 trec_dir, tmp_path):
    """Bug 9 (same class): the rank sweep reused any folder holding a summary.json, whatever config trained it."""
    path = tmp_path / "train.yaml"
    path.write_text(dump_yaml(_config(str(tiny_family_dir("llama")), tiny_groups)))
    settings = SweepRankSettings(config=str(path), ranks=(2,), data=str(trec_dir), top_k=4)
    first = sweep_rank(settings, tmp_path / "sweep", progress=False)
    assert sweep_rank(settings, tmp_path / "sweep", progress=False) == first  # same config: reused
    with pytest.raises(ConfigError, match="learning_rate"):
        sweep_rank(replace(settings, overrides=("learning_rate=0.2",)), tmp_path / "sweep", progress=False)
