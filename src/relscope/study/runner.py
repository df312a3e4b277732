"""Run the study's stages in order, skipping each one whose outputs are complete and whose config is unchanged.

A stage is complete when its folder holds `stage.json`, written last (atomically) with the stage's key (a hash
of its config slice and its upstream stages' keys), an id of its own run, and a digest of each upstream stage's
`stage.json` as it was when the stage ran. A stage is current when its key matches and those digests still match
the upstream `stage.json` files on disk: staleness is read from the files, not from what one invocation did, so
after `--force train` the stages computed from the old model rerun even when that invocation was killed before
reaching them. A stage interrupted half-way has no `stage.json`, and one whose `stage.json` is damaged counts as
interrupted (it is the study's own bookkeeping): both rerun in place (training resumes from its last checkpoint,
patching from its cached pairs); a stage that reruns for any other reason has its old folder set aside
(`<stage>.old-<time>`), never deleted. The manifest records each stage's time and peak memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from relscope.config import dump_yaml, to_mapping
from relscope.errors import ConfigError
from relscope.io import atomic_write_json, atomic_write_text, output_lock
from relscope.manifest import CONFIG_FILE, MANIFEST_FILE, build_manifest
from relscope.study.config import StudyConfig, check_study_inputs
from relscope.study.stages import STAGE_NAMES, STAGES, Stage, StudyContext
from relscope.training.memory import peak_resident_gib, resident_gib

log = logging.getLogger(__name__)
STAGE_FILE = "stage.json"


# What the stages compute, beyond their config: raised when a release changes a definition or default a stage uses,
# so a study folder made before it reruns those stages instead of reporting old-definition outputs (issue 18: the
# study-faithful layouts, knockout sets, logit lens, probe/attention layers, gradient norms and held-out accuracy;
# 19: the ablation's paired contrasts, which the findings read, and the training log's step timing; 20: knockout's
# dev run reranked in the knockout's own prompt layout).
DEFINITIONS = 20


def stage_keys(config: StudyConfig) -> dict[str, str]:
    """Each stage's key: its own config slice, relscope's definitions version and the keys of the stages it reads."""
    keys: dict[str, str] = {}
    for stage in STAGES:
        text = json.dumps([to_mapping(stage.settings(config)), DEFINITIONS, [keys[n] for n in stage.needs]],
                          sort_keys=True)
        keys[stage.name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return keys


def stage_record(folder: Path) -> dict | None:
    """The stage's `stage.json` when the stage finished; None when there is none, or when it is damaged or edited
    into other types (the study's own bookkeeping: the stage then counts as unfinished and reruns)."""
    path = folder / STAGE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as err:  # unreadable, not UTF-8, not JSON
        log.warning("%s: unreadable (%s); the stage counts as unfinished and reruns", path, type(err).__name__)
        return None
    if not _is_record(record):
        log.warning("%s: not a stage record (edited?); the stage counts as unfinished and reruns", path)
        return None
    return record


def _is_record(record: object) -> bool:
    """A stage.json holds what the runner wrote, with the types it wrote (a record of an older relscope has no
    `run` and no `upstream`: it is read, and counts as stale wherever the stage reads other stages)."""
    def amount(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0

    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return False
    upstream = record.get("upstream", {})
    return (isinstance(record.get("run", ""), str) and isinstance(upstream, dict)
            and all(isinstance(v, str) for v in upstream.values())
            and amount(record.get("seconds")) and amount(record.get("peak_rss_mib"))
            and amount(record.get("peak_cuda_mib", 0)))


def record_digest(record: dict) -> str:
    """What a downstream stage remembers of an upstream stage's run: a hash of its whole `stage.json` (each run
    draws its own `run` id, so a rerun under the same config differs too)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_current(record: dict | None, key: str, upstream: dict[str, str]) -> bool:
    """A finished stage whose config slice is unchanged and whose upstream stages are still the runs it read."""
    return record is not None and record["key"] == key and record.get("upstream", {}) == upstream


def run_study(config: StudyConfig, out: str | Path, force: Sequence[str] = (), progress: bool = True,
              source: str | Path = "study config") -> dict:
    """Run (or resume) the study into `out`; returns the manifest (also written to out/manifest.json).

    Everything the stages will read is checked first (`source`, the study YAML, names the key in errors), so a bad
    value for the last stage fails in seconds and before anything is written to `out`."""
    unknown = [name for name in force if name not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"--force {unknown[0]}: no such stage; stages are {', '.join(STAGE_NAMES)}")
    check_study_inputs(config, source)
    root = Path(out)
    with output_lock(root):
        return _run(config, root, set(force), progress)


def _run(config: StudyConfig, root: Path, force: set[str], progress: bool) -> dict:
    atomic_write_text(root / CONFIG_FILE, dump_yaml(config))
    keys, ctx, started = stage_keys(config), StudyContext(config, root, progress), time.monotonic()
    manifest = build_manifest(to_mapping(config), stages={}, budget_minutes=config.budget_minutes)
    records: dict[str, dict] = {}  # each stage's stage.json as it stands once this run has dealt with the stage
    for number, stage in enumerate(STAGES, 1):
        line = f"[{number}/{len(STAGES)}] {stage.name}: {stage.title}"
        record = stage_record(ctx.folder(stage.name))
        upstream = {name: record_digest(records[name]) for name in stage.needs}
        if stage.name not in force and is_current(record, keys[stage.name], upstream):
            log.info("%s: complete, config and upstream stages unchanged; skipped", line)
            manifest["stages"][stage.name] = {**record, "status": "skipped"}
        else:
            if record:  # finished under another config or upstream run (or forced): keep it beside, never delete
                _set_aside(ctx.folder(stage.name))
            log.info("%s (study time so far %s)", line, _clock(time.monotonic() - started))
            record = _run_stage(stage, ctx, keys[stage.name], upstream)
            manifest["stages"][stage.name] = {**record, "status": "ran"}
        records[stage.name] = record
        manifest["seconds_this_run"] = round(time.monotonic() - started, 1)
        atomic_write_json(root / MANIFEST_FILE, manifest)
    manifest["seconds_all_stages"] = round(sum(s["seconds"] for s in manifest["stages"].values()), 1)
    atomic_write_json(root / MANIFEST_FILE, manifest)
    return manifest


def _run_stage(stage: Stage, ctx: StudyContext, key: str, upstream: dict[str, str]) -> dict:
    folder = ctx.folder(stage.name)
    folder.mkdir(parents=True, exist_ok=True)
    with peak_memory() as peak:
        started = time.monotonic()
        stage.run(ctx)
        seconds = time.monotonic() - started
    record = {"key": key, "run": uuid.uuid4().hex, "upstream": upstream, "seconds": round(seconds, 1),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **peak}
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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = folder.with_name(f"{folder.name}.old-{stamp}"), 1
    while aside.exists():  # set aside twice within a second (a fast stage forced again): never rename onto it
        n += 1
        aside = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
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
    """Resident memory now; where /proc is missing (not Linux), the process's peak so far."""
    rss = resident_gib()
    return (rss if rss is not None else peak_resident_gib()) * 1024
