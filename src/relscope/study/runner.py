"""Run the study's stages in order, skipping each one whose outputs are complete and whose config is unchanged.

A stage is complete when its folder holds `stage.json`, written last (atomically) with the stage's key:
a hash of its config slice and its upstream stages' keys. A stage also reruns when a stage it reads
was redone in this run (so `--force train` redoes everything downstream of training). A stage
interrupted half-way has no `stage.json` and is rerun in place (training resumes from its last
checkpoint, patching from its cached pairs); a stage that reruns for any other reason has its old
folder set aside (`<stage>.old-<time>`), never deleted. The manifest records each stage's time and peak memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from relscope.config import dump_yaml, to_mapping
from relscope.errors import ConfigError
from relscope.io import atomic_write_json, atomic_write_text, output_lock
from relscope.study.config import StudyConfig
from relscope.study.stages import STAGE_NAMES, STAGES, Stage, StudyContext

log = logging.getLogger(__name__)
STAGE_FILE = "stage.json"


def stage_keys(config: StudyConfig) -> dict[str, str]:
    """Each stage's key: its own config slice plus the keys of the stages it reads."""
    keys: dict[str, str] = {}
    for stage in STAGES:
        text = json.dumps([to_mapping(stage.settings(config)), [keys[n] for n in stage.needs]], sort_keys=True)
        keys[stage.name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return keys


def stage_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_study(config: StudyConfig, out: str | Path, force: Sequence[str] = (), progress: bool = True) -> dict:
    """Run (or resume) the study into `out`; returns the manifest (also written to out/manifest.json)."""
    unknown = [name for name in force if name not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"--force {unknown[0]}: no such stage; stages are {', '.join(STAGE_NAMES)}")
    root = Path(out)
    with output_lock(root):
        return _run(config, root, set(force), progress)


def _run(config: StudyConfig, root: Path, force: set[str], progress: bool) -> dict:
    from relscope.manifest import build_manifest

    atomic_write_text(root / "config.yaml", dump_yaml(config))
    keys, ctx, started = stage_keys(config), StudyContext(config, root, progress), time.monotonic()
    manifest = build_manifest(to_mapping(config), stages={}, budget_minutes=config.budget_minutes)
    ran: set[str] = set()
    for number, stage in enumerate(STAGES, 1):
        line = f"[{number}/{len(STAGES)}] {stage.name}: {stage.title}"
        record = stage_record(ctx.folder(stage.name))
        fresh = ran.intersection(stage.needs)  # an upstream stage was redone: its readers are stale
        if record and record.get("key") == keys[stage.name] and stage.name not in force and not fresh:
            log.info("%s: complete, config unchanged; skipped", line)
            manifest["stages"][stage.name] = {**record, "status": "skipped"}
        else:
            if record:  # finished under another config (or forced, or stale): keep it beside, never delete
                _set_aside(ctx.folder(stage.name))
            log.info("%s (study time so far %s)", line, _clock(time.monotonic() - started))
            manifest["stages"][stage.name] = {**_run_stage(stage, ctx, keys[stage.name]), "status": "ran"}
            ran.add(stage.name)
        manifest["seconds_this_run"] = round(time.monotonic() - started, 1)
        atomic_write_json(root / "manifest.json", manifest)
    manifest["seconds_all_stages"] = round(sum(s["seconds"] for s in manifest["stages"].values()), 1)
    atomic_write_json(root / "manifest.json", manifest)
    return manifest


def _run_stage(stage: Stage, ctx: StudyContext, key: str) -> dict:
    folder = ctx.folder(stage.name)
    folder.mkdir(parents=True, exist_ok=True)
    with peak_memory() as peak:
        started = time.monotonic()
        stage.run(ctx)
        seconds = time.monotonic() - started
    record = {"key": key, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **peak}
    atomic_write_json(folder / STAGE_FILE, record)  # last: its presence means the stage is complete
    release_memory()
    log.info("    %s done in %s (peak RSS %.0f MiB)", stage.name, _clock(seconds), peak["peak_rss_mib"])
    return record


def release_memory() -> None:
    """Hand a finished stage's memory back, so that the next stage's peak is its own and not the leftovers:
    the model and optimiser go with the stage's frames, glibc keeps freed pages until asked to trim."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc (musl): nothing to trim
            pass


def _set_aside(folder: Path) -> None:
    aside = folder.with_name(f"{folder.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    folder.rename(aside)
    log.info("    %s: earlier outputs set aside in %s", folder.name, aside.name)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


@contextmanager
def peak_memory(interval: float = 0.1) -> Iterator[dict]:
    """Peak resident memory of this process while the block runs (sampled), and peak CUDA memory.

    ru_maxrss alone is the peak of the whole process so far, so a later, smaller stage would inherit
    an earlier stage's figure; sampling /proc/self/statm gives each stage its own.
    """
    import torch

    result: dict = {}
    samples = [_rss_mib()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            samples.append(_rss_mib())

    thread = threading.Thread(target=sample, daemon=True)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        samples.append(_rss_mib())
        result["peak_rss_mib"] = round(max(samples), 1)
        if cuda:
            result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux: the process peak so far (KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
