"""Files `relscope patch` writes and relscope reads back (ie.npz, ie_heads.npz, the pair cache), truncated, damaged
or hand-edited: the commands that read them (compare, knockout, heads) answer with one error line naming the file and
the fix, exit 2, and write nothing; a damaged pair-cache entry is recomputed, never trusted or fatal."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from relscope.analysis.patching.artefacts import load_ie, load_ie_heads
from relscope.cli import main
from relscope.errors import DataError


@pytest.fixture(scope="module")
def patched(tmp_path_factory, tiny_family_dir) -> tuple[Path, Path, Path]:
    """(model, groups, a real patch run with --heads) on a tiny random model."""
    from relscope.data.groups import NegativePassage, TrainingGroup, write_groups

    tmp = tmp_path_factory.mktemp("patched")
    noise = ["The quick brown fox jumps over the lazy dog.", "Mountains rise above the clouds.",
             "Bananas ripen in tropical climates."]
    topics = [("what is the capital of france", "Paris is the capital and largest city of France."),
              ("where do rivers flow", "Rivers flow to the sea.")]
    model, groups = tiny_family_dir("llama"), tmp / "groups.jsonl"
    write_groups([TrainingGroup(f"q{i}", query, (positive,), tuple(NegativePassage(n, "hard") for n in noise))
                  for i, (query, positive) in enumerate(topics)], groups)
    run = tmp / "run"
    assert main(["patch", str(model), "--groups", str(groups), "--max-pairs", "2", "--min-gap", "0", "--components",
                 "mlp", "attn", "--positions", "last", "document", "--heads", "--head-positions", "last", "document",
                 "--out", str(run), "--quiet"]) == 0
    return model, groups, run


def _saved(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}


def _rewrite(path: Path, **changes) -> None:
    """Write the .npz again with arrays replaced (None: left out)."""
    arrays = {**_saved(path), **changes}
    with path.open("wb") as f:
        np.savez(f, **{k: v for k, v in arrays.items() if v is not None})


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(3000))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _one_array(path: Path) -> None:
    ie = _saved(path)["ie"]
    with path.open("wb") as f:
        np.save(f, ie)


def _pickled(path: Path) -> None:
    _rewrite(path, ie=np.array([{"a": 1}], dtype=object))


def _flipped_byte(path: Path) -> None:
    """One byte of the stored data changed: the zip's CRC no longer matches."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("ie.npy")
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF
    path.write_bytes(bytes(data))


def _text_file(path: Path) -> None:
    path.write_text("ie,layers\n1,2\n")


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _shape(path: Path, key: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    return lambda p: _rewrite(p, **{key: fn(_saved(p)[key])})


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncated,
    "random bytes": _garbage,
    "empty": _empty,
    "a .npy, not an .npz": _one_array,
    "object array (pickle)": _pickled,
    "flipped byte": _flipped_byte,
    "text": _text_file,
    "a folder": _folder,
    "no ie key": lambda p: _rewrite(p, ie=None, effects=_saved(p)["ie"]),
    "no layers key": lambda p: _rewrite(p, layers=None),
    "ie 2-d": lambda p: _rewrite(p, ie=_saved(p)["ie"].reshape(len(_saved(p)["ie"]), -1)),
    "ie as strings": lambda p: _rewrite(p, ie=_saved(p)["ie"].astype(str)),
    "ie with NaN": lambda p: _rewrite(p, ie=np.full_like(_saved(p)["ie"], np.nan)),
    "zero pairs": lambda p: _rewrite(p, ie=_saved(p)["ie"][:0], qids=_saved(p)["qids"][:0]),
    "layers as floats": lambda p: _rewrite(p, layers=_saved(p)["layers"].astype(float)),
    "one layer too many": lambda p: _rewrite(p, layers=np.arange(len(_saved(p)["layers"]) + 1)),
    "layers unsorted": lambda p: _rewrite(p, layers=_saved(p)["layers"][::-1].copy()),
    "groups as numbers": lambda p: _rewrite(p, groups=np.arange(len(_saved(p)["groups"]))),
    "qids misaligned": lambda p: _rewrite(p, qids=_saved(p)["qids"][:1]),
}


def _copy_run(run: Path, tmp: Path) -> Path:
    copy = tmp / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("pairs"))
    return copy


def _one_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("relscope: error:")]
    assert code == 2, f"exit {code}; stderr: {err}"
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"
    return lines[0]


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
@pytest.mark.parametrize("name", ["ie.npz", "ie_heads.npz"])
def test_compare_on_a_damaged_patch_output_is_one_error(name, damage, patched, tmp_path, capsys):
    """compare (and compare --heads) over a damaged ie.npz / ie_heads.npz: exit 2, one line, nothing written."""
    run = _copy_run(patched[2], tmp_path)
    DAMAGE[damage](run / name)
    out = tmp_path / "out"
    code = main(["compare", str(run), str(patched[2]), "--out", str(out), *(["--heads"] if "heads" in name else [])])
    _one_error(capsys, code, name)
    assert not out.exists() or not any(p.suffix in (".md", ".csv", ".json") for p in out.rglob("*"))


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "no ie key", "zero pairs", "ie with NaN",
                                    "one layer too many"])
@pytest.mark.parametrize("command", ["knockout", "heads"])
def test_knockout_and_heads_on_a_damaged_ie_heads_are_one_error(command, damage, patched, tmp_path, capsys):
    """knockout --ie-heads / heads --ie-heads with a damaged file: exit 2, one line naming it and the fix."""
    model, groups, run = patched
    path = tmp_path / "ie_heads.npz"
    shutil.copy(run / "ie_heads.npz", path)
    DAMAGE[damage](path)
    out = tmp_path / "out"
    code = main([command, str(model), "--ie-heads", str(path), "--groups", str(groups), "--out", str(out),
                 *(["--max-groups", "2"] if command == "knockout" else ["--max-pairs", "1", "--quiet"])])
    line = _one_error(capsys, code, "ie_heads.npz")
    assert "relscope patch --heads" in line or "--head-positions" in line
    assert not out.exists() or not any(p.suffix in (".md", ".csv", ".json", ".npz") for p in out.rglob("*"))


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "no ie key", "ie 2-d",
                                    "object array (pickle)", "flipped byte"])
def test_loaders_raise_one_data_error_naming_the_file(damage, patched, tmp_path):
    """load_ie / load_ie_heads: a DataError naming the file and `relscope patch`, on one line."""
    for name, load in (("ie.npz", load_ie), ("ie_heads.npz", load_ie_heads)):
        path = tmp_path / name
        shutil.copy(patched[2] / name, path)
        DAMAGE[damage](path)
        with pytest.raises(DataError) as raised:
            load(path)
        assert str(path) in str(raised.value) and "relscope patch" in str(raised.value)
        assert "\n" not in str(raised.value)


def test_the_loaders_read_what_patch_wrote(patched):
    """The checks accept every file a real run writes (and read the layout back)."""
    grid, heads = load_ie(patched[2] / "ie.npz"), load_ie_heads(patched[2] / "ie_heads.npz")
    assert grid.ie.shape == (2, 2, 3, 2) and grid.components == ["mlp", "attn"] and grid.layers == [0, 1, 2]
    assert heads.groups == ["last", "document"] and len(heads.qids) == 2


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "no patched key", "object array (pickle)"])
def test_a_damaged_pair_cache_is_recomputed(damage, patched, tmp_path, capsys):
    """Every pair-cache entry damaged: the rerun recomputes them and writes the same IE as the intact run."""
    model, groups, run = patched
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    entries = sorted((copy / "pairs").glob("*.npz"))
    assert entries
    for entry in entries:
        if damage == "no patched key":
            _rewrite(entry, patched=None)
        else:
            DAMAGE[damage](entry)
    assert main(["patch", str(model), "--groups", str(groups), "--max-pairs", "2", "--min-gap", "0", "--components",
                 "mlp", "attn", "--positions", "last", "document", "--heads", "--head-positions", "last", "document",
                 "--out", str(copy), "--quiet"]) == 0, capsys.readouterr().err
    np.testing.assert_allclose(_saved(copy / "ie.npz")["ie"], _saved(run / "ie.npz")["ie"], atol=1e-6)
    np.testing.assert_allclose(_saved(copy / "ie_heads.npz")["ie"], _saved(run / "ie_heads.npz")["ie"], atol=1e-6)
    for entry in sorted((copy / "pairs").glob("*.npz")):  # rewritten sound
        with np.load(entry, allow_pickle=False) as saved:
            assert {"clean", "corrupted", "patched"} <= set(saved.files)
