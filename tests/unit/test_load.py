"""Model sources resolve to the right loader; bad ones say what to do."""

from __future__ import annotations

import pytest

from relscope.errors import ModelError
from relscope.models.load import load_model, resolve_source


def test_packaged_alias_resolves_to_the_gguf_inside_the_wheel():
    kind, path = resolve_source("smollm2-135m-instruct")
    assert kind == "gguf" and path.suffix == ".gguf" and path.is_file()


def test_local_folder_loads_with_its_spec(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert loaded.spec.model_type == "llama" and loaded.tokenizer.pad_token_id is not None
    assert not loaded.model.training


@pytest.mark.parametrize("name,words", [
    ("/nowhere/model.gguf", "GGUF file not found"),
    ("./missing-folder", "not a model folder"),
])
def test_bad_sources_are_model_errors(name, words):
    with pytest.raises(ModelError, match=words):
        resolve_source(name)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_hub_ids_go_to_the_hub_loader():
    assert resolve_source("Qwen/Qwen2.5-0.5B-Instruct") == ("hub", None)


def test_bad_dtype_is_named(tiny_model_dir):
    with pytest.raises(ModelError, match="dtype 'fp8'"):
        load_model(str(tiny_model_dir), dtype="fp8", device="cpu")
