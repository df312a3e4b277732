"""Every run writes a manifest: config, versions, git revision, template hash, data checksums."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import relscope

PACKAGES = ("torch", "transformers", "peft", "accelerate", "ir_measures", "numpy", "scikit-learn", "gguf")

MANIFEST_FILE = "manifest.json"  # in every output folder: what ran, on what, with which versions
CONFIG_FILE = "config.yaml"  # in every output folder of a job with a config: its resolved settings


def manifest_beside(output_file: str | Path) -> Path:
    """Where a job whose output is one file (a fused run, a group file) writes its manifest: <file>.manifest.json."""
    path = Path(output_file)
    return path.with_name(path.name + ".manifest.json")


def file_sha256(path: str | Path) -> str | None:
    """The file's sha256; None for a pipe or device (`<(zcat run.gz)`), which was consumed when it was read."""
    if not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# What a checkpoint folder holds besides what the model computes with (the Trainer's and the callbacks' state):
# left out of content digests, so that resuming or re-evaluating a run does not invalidate caches.
NOT_CONTENT = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "grad_norms.npz",
               "dev_metrics.json", "README.md")


def _is_content(path: Path) -> bool:
    name = path.name
    return (path.is_file() and not name.startswith(".") and name not in NOT_CONTENT
            and not name.startswith("rng_state"))


def content_digest(path: str | Path | None) -> str | None:
    """A sha256 of what an adapter (or any model folder or file) computes with: the names and bytes of its weight,
    head, config and tokenizer files, not its optimiser or RNG state; None for None.

    Caches of model outputs key on this, never on the path, so that a model retrained into the same folder cannot
    get the old model's numbers. Compute it once per job (it reads every byte)."""
    if path is None:
        return None
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if _is_content(p))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:32]


def files_signature(path: str | Path) -> str | None:
    """A cheap stand-in for content_digest where the bytes are gigabytes (base models): the names, sizes and
    modification times (ns) of the folder's files, so that weights rewritten in place change it; None for what is
    not a local path (a hub id: its commit is the model's identity there)."""
    path = Path(path)
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if _is_content(p))
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:32]


def cache_identity(model_source: str, adapter: str | Path | None, revision: str | None = None) -> dict[str, Any]:
    """What every cache of model outputs is keyed on: the base model's files (or hub revision), the adapter's
    content and relscope's version. Paths alone never are: retraining into the same folder must miss the cache."""
    return {"model": model_source, "model_files": files_signature(model_source), "model_revision": revision,
            "adapter_sha256": content_digest(adapter), "relscope": relscope.__version__}


def git_revision() -> str | None:
    """The relscope checkout's revision, with '+dirty' for uncommitted changes; None when not a checkout."""
    root = Path(relscope.__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def package_versions() -> dict[str, str]:
    """The versions of relscope, Python and the installed key packages, so a result can be reproduced."""
    versions = {"relscope": relscope.__version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def build_manifest(config: Mapping[str, Any], data_files: Mapping[str, Path] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """What made a run (command, config, versions, git revision, host, input checksums) for its manifest file."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "config": dict(config),
        "versions": package_versions(),
        "git_revision": git_revision(),
        "host": {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor()},
        "data": {k: {"path": str(p), "sha256": file_sha256(p)} for k, p in (data_files or {}).items()},
        **extra,
    }
