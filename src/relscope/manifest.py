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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    versions = {"relscope": relscope.__version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def build_manifest(config: Mapping[str, Any], data_files: Mapping[str, Path] | None = None,
                   **extra: Any) -> dict[str, Any]:
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
