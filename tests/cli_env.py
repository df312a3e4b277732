"""The CLI matrices' shared inputs: a valid environment (TREC folder, tiny models, groups, a trained
checkpoint) that each bad-input case breaks in one way, and a helper that runs the CLI and reads its error."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from relscope.cli import main


@dataclass
class Env:
    """Valid inputs to break: a TREC folder, a tiny model, a group file, a train config, a trained checkpoint."""

    tmp: Path
    trec: Path
    model: Path
    other_model: Path
    groups: Path
    checkpoint: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def trec_with(self, name: str, content: str | bytes) -> Path:
        """A copy of the TREC folder with one file replaced."""
        folder = self.tmp / f"trec-{name.replace('.', '-')}"
        shutil.copytree(self.trec, folder)
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return folder

    def config(self, **changes) -> Path:
        values = dict(model=str(self.model), train=[str(self.groups)], negatives=2, max_length=96, max_steps=2,
                      batch_size=2, save_steps=2, report_to=[], lora={"rank": 4})
        values.update(changes)
        return self.write("train.yaml", json.dumps(values))  # JSON is YAML

    def rerank(self, *extra: str, data: Path | None = None) -> list[str]:
        return ["rerank", "--model", str(self.model), "--data", str(data or self.trec), "--top-k", "3",
                "--out", str(self.out), "--quiet", *extra]

    def train(self, config: Path, *extra: str) -> list[str]:
        return ["train", "--config", str(config), "--out", str(self.out), "--quiet", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_family_dir) -> Path:
    """One real (tiny) training run whose checkpoint the adapter cases damage."""
    from relscope.config import from_mapping
    from relscope.training.config import TrainConfig
    from relscope.training.job import run_train_job

    tmp = tmp_path_factory.mktemp("trained")
    groups = tmp / "groups.jsonl"
    groups.write_text("".join(json.dumps({"query_id": str(i), "query": f"what is {w}",
                                          "positive_passages": [{"docid": f"p{i}", "text": f"{w} is a thing"}],
                                          "negative_passages": [{"docid": f"n{i}{j}", "text": f"other {j}"}
                                                                for j in range(2)]}) + "\n"
                              for i, w in enumerate(["paris", "bananas", "rivers", "clouds"])))
    config = from_mapping(TrainConfig, dict(model=str(tiny_family_dir("llama")), train=[str(groups)], negatives=2,
                                            max_length=96, max_steps=2, batch_size=2, save_steps=2, report_to=[],
                                            lora={"rank": 4}))
    run_train_job(config, tmp / "run", progress=False)
    return tmp / "run" / "checkpoint-2"


@pytest.fixture
def env(tmp_path, trec_dir, tiny_family_dir, trained) -> Env:
    groups = tmp_path / "groups.jsonl"
    shutil.copy(trained.parent.parent / "groups.jsonl", groups)
    return Env(tmp_path, trec_dir, tiny_family_dir("llama"), tiny_family_dir("qwen2"), groups, trained)


def run_cli(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """(exit code, the `relscope: error:` lines, all of stderr) of one CLI call."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, [line for line in err.splitlines() if "error:" in line], err


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


# Test modules take the fixtures by importing them: `from cli_env import env, trained  # noqa: F401`.
