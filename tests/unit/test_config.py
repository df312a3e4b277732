from __future__ import annotations

import pytest

from relscope.config import dump_yaml, from_mapping, load_yaml
from relscope.evaluation.settings import RerankConfig
from relscope.errors import ConfigError


def test_unknown_key_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'topk'; valid keys are: .*top_k"):
        from_mapping(RerankConfig, {"topk": 5})


@pytest.mark.parametrize(
    "values,words",
    [
        ({"top_k": "ten"}, "top_k: expected an integer"),
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"prefix_cache": "yes"}, "expected true or false"),
        ({"on_missing": "drop"}, "choose one of 'error', 'skip'"),
        ({"measures": "nDCG@10"}, "expected a list"),
    ],
)
def test_bad_values_are_reported_by_key(values, words):
    with pytest.raises(ConfigError, match=words):
        from_mapping(RerankConfig, values, "cfg.yaml")


def test_yaml_round_trip(tmp_path):
    config = from_mapping(RerankConfig, {"top_k": 20, "measures": ["nDCG@10"]})
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(config))
    assert from_mapping(RerankConfig, load_yaml(path)) == config
    assert config.measures == ("nDCG@10",)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("top_k: [1,\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: not valid YAML \(line 2"):
        load_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(path)


def test_every_shipped_config_loads():
    """A typo in configs/ fails here, not an hour into a run."""
    from pathlib import Path

    from relscope.config import from_mapping, load_yaml
    from relscope.evaluation.settings import RerankConfig
    from relscope.study.config import load_study_config
    from relscope.training.config import TrainConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert len(files) >= 9
    for path in files:
        if path.name.startswith("study-"):
            load_study_config(path)
            continue
        cls = TrainConfig if path.name.startswith("train-") or path.parent.name == "paper" else RerankConfig
        from_mapping(cls, load_yaml(path), str(path))
