"""The arrays `relscope patch` writes and relscope reads back: ie.npz, ie_heads.npz (and ie_scores.npz) and the
pair cache. Every read goes through here: no pickle, every key, shape and dtype checked, so a truncated, damaged or
hand-edited file is one error line naming it and the fix (a damaged cache entry is only a miss), never a traceback
from zipfile or numpy.

    ie.npz        ie (pairs, components, layers, groups) float; components, layers, groups; qids, ld_clean,
                  ld_corrupted (pairs,) when present
    ie_heads.npz  ie (pairs, groups, layers, heads) float; groups, layers; qids (pairs,) when present
    pair cache    clean, corrupted () float; patched (sites,) float
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relscope.data.lines import read_input_bytes
from relscope.errors import DataError

IE_FILE = "ie.npz"  # per site: IE of each pair, with the site grid's axes


def head_ie_file(what: str) -> str:
    """The per-head array of a `relscope patch --heads` ("heads") or `--scores` ("scores") run."""
    return f"ie_{what}.npz"


IE_HEADS_FILE = head_ie_file("heads")

# What numpy and zipfile raise on a file that is not a sound .npz (truncated, random bytes, a pickle, an encrypted
# or oddly compressed member, a header that claims an absurd shape).
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, MemoryError, OverflowError, NotImplementedError,
               RuntimeError, zipfile.BadZipFile, zlib.error, struct.error)


@dataclass(frozen=True)
class IeGrid:
    """ie.npz: the indirect effect of each pair at each (component, layer, position group)."""

    ie: np.ndarray  # (pairs, components, layers, groups)
    components: list[str]
    layers: list[int]
    groups: list[str]
    qids: list[str] | None
    method: str = "exact"  # or the attribution estimator whose estimates these are (relscope patch --attribution)


@dataclass(frozen=True)
class HeadGrid:
    """ie_heads.npz (or ie_scores.npz, ie_queries.npz): the indirect effect of each pair at each (group, layer,
    head). ie_keys.npz counts key/value heads instead (its head_axis says so) and is not read as one."""

    ie: np.ndarray  # (pairs, groups, layers, heads)
    groups: list[str]
    layers: list[int]
    qids: list[str] | None
    method: str = "exact"


def read_npz(path: str | Path, fix: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read at once without pickle; a file that is no sound .npz is one DataError
    naming it, what is wrong and `fix`."""
    data = read_input_bytes(path, "patch output (.npz)")  # OS errors (permissions, a folder): one line already
    if not data:
        raise DataError(f"{path}: is empty; {fix}")
    if not data.startswith((b"PK\x03\x04", b"\x93NUMPY")):  # neither a zip (.npz) nor a numpy array (.npy)
        raise DataError(f"{path}: is not an .npz archive (it does not begin like one); {fix}")
    try:
        saved = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(saved, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: is a single array (.npy), not an .npz archive of named arrays; {fix}")
        with saved:
            return {str(key): saved[key] for key in saved.files}
    except _UNREADABLE as err:
        raise DataError(f"{path}: damaged or not an .npz archive ({_reason(err)}); {fix}") from None


def load_ie(path: str | Path) -> IeGrid:
    """ie.npz of a `relscope patch` run, checked."""
    fix = _fix(path, "relscope patch")
    arrays = read_npz(path, fix)
    ie = _floats(arrays, "ie", 4, path, fix)
    components = _names(arrays, "components", ie.shape[1], path, fix)
    layers = _layers(arrays, ie.shape[2], path, fix)
    groups = _names(arrays, "groups", ie.shape[3], path, fix)
    qids = _per_pair(arrays, ie.shape[0], path, fix)
    return IeGrid(ie, components, layers, groups, qids, _method(arrays))


def load_ie_heads(path: str | Path) -> HeadGrid:
    """ie_heads.npz (or ie_scores.npz) of a `relscope patch --heads` run, checked."""
    fix = _fix(path, "relscope patch --heads")
    arrays = read_npz(path, fix)
    if str(arrays.get("head_axis", "head")) != "head":  # a key/value head is not a head a knockout can ablate
        raise DataError(f"{path}: counts {arrays['head_axis']}s (a --qk run's key sites), not heads; {fix}")
    ie = _floats(arrays, "ie", 4, path, fix)
    groups = _names(arrays, "groups", ie.shape[1], path, fix)
    layers = _layers(arrays, ie.shape[2], path, fix)
    return HeadGrid(ie, groups, layers, _per_pair(arrays, ie.shape[0], path, fix), _method(arrays))


def _method(arrays: Mapping[str, np.ndarray]) -> str:
    """How the effects were measured: "exact" (and for files from before estimates could be written), else the
    estimator."""
    return str(arrays["method"]) if "method" in arrays else "exact"


def load_pair_result(path: Path, sites: int) -> tuple[float, float, np.ndarray] | None:
    """(LD_clean, LD_corrupted, patched) of one cached pair, or None when the entry is missing or unsound (a kill
    mid-write on a filesystem without atomic rename, a hand edit): the pair is then computed again."""
    if not path.is_file():
        return None
    try:
        arrays = read_npz(path, "")
    except DataError:
        return None
    clean, corrupted, patched = (arrays.get(key) for key in ("clean", "corrupted", "patched"))
    if any(a is None or a.dtype.kind != "f" for a in (clean, corrupted, patched)):
        return None
    if clean.shape != () or corrupted.shape != () or patched.shape != (sites,):
        return None
    return float(clean), float(corrupted), patched.astype(np.float64)


def _fix(path: str | Path, command: str) -> str:
    return f"rerun `{command}` to write it again (or delete {Path(path).name})"


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:77] + "...") if len(text) > 80 else (text or type(err).__name__)


def _array(arrays: Mapping[str, np.ndarray], key: str, path: str | Path, fix: str) -> np.ndarray:
    if key not in arrays:
        have = ", ".join(repr(k[:30]) for k in sorted(arrays)[:6]) or "none"
        raise DataError(f"{path}: no array {key!r} (it has {have}); {fix}")
    return arrays[key]


def _floats(arrays: Mapping[str, np.ndarray], key: str, ndim: int, path: str | Path, fix: str) -> np.ndarray:
    """A float array of `ndim` axes, none empty, every value finite."""
    a = _array(arrays, key, path, fix)
    if a.dtype.kind != "f" or a.ndim != ndim:
        raise DataError(f"{path}: {key!r} is {a.ndim}-d {a.dtype}, expected {ndim}-d float; {fix}")
    if 0 in a.shape:
        raise DataError(f"{path}: {key!r} has shape {a.shape}: no pairs or no sites; {fix}")
    if not np.isfinite(a).all():
        raise DataError(f"{path}: {key!r} holds {int((~np.isfinite(a)).sum())} non-finite values; {fix}")
    return a.astype(np.float64)


def _names(arrays: Mapping[str, np.ndarray], key: str, length: int, path: str | Path, fix: str) -> list[str]:
    """`length` distinct, non-empty strings."""
    a = _array(arrays, key, path, fix)
    if a.dtype.kind != "U" or a.shape != (length,):
        raise DataError(f"{path}: {key!r} is {a.dtype} of shape {a.shape}, expected {length} names to match 'ie'; "
                        f"{fix}")
    names = [str(x) for x in a]
    if len(set(names)) != len(names) or not all(names):
        raise DataError(f"{path}: {key!r} repeats a name or has an empty one; {fix}")
    return names


def _layers(arrays: Mapping[str, np.ndarray], length: int, path: str | Path, fix: str) -> list[int]:
    """`length` layer indices, non-negative and increasing (the order the sites were patched in)."""
    a = _array(arrays, "layers", path, fix)
    if a.dtype.kind not in "iu" or a.shape != (length,):
        raise DataError(f"{path}: 'layers' is {a.dtype} of shape {a.shape}, expected {length} integers to match "
                        f"'ie'; {fix}")
    layers = [int(x) for x in a]
    if any(x < 0 for x in layers) or any(b <= a for a, b in zip(layers, layers[1:])):
        raise DataError(f"{path}: 'layers' {_short(layers)} are not distinct non-negative layers in increasing "
                        f"order (an older relscope wrote them in the order given to --layers); {fix}")
    return layers


def _per_pair(arrays: Mapping[str, np.ndarray], pairs: int, path: str | Path, fix: str) -> list[str] | None:
    """The qids (and logit differences, where written) must have one entry per row of 'ie'."""
    for key in ("qids", "ld_clean", "ld_corrupted"):
        if key in arrays and arrays[key].shape != (pairs,):
            raise DataError(f"{path}: {key!r} has shape {arrays[key].shape} but 'ie' has {pairs} pairs: they do "
                            f"not line up (an older relscope dropped pairs by query id); {fix}")
    for key in ("ld_clean", "ld_corrupted"):
        if key in arrays and arrays[key].dtype.kind != "f":
            raise DataError(f"{path}: {key!r} is {arrays[key].dtype}, expected float; {fix}")
    if "qids" not in arrays:
        return None
    if arrays["qids"].dtype.kind != "U":
        raise DataError(f"{path}: 'qids' is {arrays['qids'].dtype}, expected strings; {fix}")
    return [str(q) for q in arrays["qids"]]


def _short(values: list) -> str:
    text = " ".join(map(str, values[:8]))
    return text + (" ..." if len(values) > 8 else "")
