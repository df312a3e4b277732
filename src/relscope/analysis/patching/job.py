"""`relscope patch`: the layer x component x position-group sweep over many pairs, with its tables and heatmaps.

Outputs: ie.npz (ie[pair, component, layer, group], the clean and corrupted logit differences, the qids),
ie_mean.csv, top_sites.{csv,md}, one heatmap per component (layer x position group), manifest.json; with --heads
ie_heads.npz and a layer x head heatmap per position group; with --scores ie_scores.npz and one per attention block;
with --attribution METHOD the same files hold that estimator's IEs instead (their `method` says which), and with
--validate as well the exact ones, the estimates beside them (ie_METHOD.npz, ie_heads_METHOD.npz, ...) and their
agreement per site type (validation.csv/.md, validation_METHOD.png). Each pair's result is kept in pairs/ as it is
done, so an interrupted or widened run resumes (PairCache).

Under `accelerate launch` each process patches every n-th pair and the main process gathers and writes them, in
the order one process would have produced (each pair is independent, so the numbers are the same; tested).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from relscope.analysis.patching.artefacts import IE_FILE, head_ie_file, load_pair_result
from relscope.analysis.patching.engine import PairResult, PatchingEngine, indirect_effects
from relscope.analysis.patching.estimators import estimate
from relscope.analysis.patching.fast import RESIDUAL, FastPatcher
from relscope.analysis.patching.pairs import PatchPair, build_pairs
from relscope.analysis.patching.scores import score_blocks, score_sites
from relscope.analysis.patching.settings import STUDY_LAYOUT, PatchSettings, check_block_layout
from relscope.analysis.patching.sites import UNSIGNED_ESTIMATORS, Site, all_sites, head_sites, qk_sites
from relscope.analysis.patching.validation import agreement, site_type
from relscope.errors import ConfigError, DataError, ModelError, overflow_hint
from relscope.io import atomic_path, atomic_write_json, atomic_write_text
from relscope.manifest import build_manifest, cache_identity
from relscope.processes import over_items, process_device, process_state
from relscope.reports import plots
from relscope.reports.tables import to_csv, write_table

if TYPE_CHECKING:
    from relscope.data.groups import TrainingGroup
    from relscope.models.heads import Head
    from relscope.models.load import LoadedModel
    from relscope.prompts.templates import PromptTemplate
    from relscope.prompts.tokenize import PromptBuilder

log = logging.getLogger(__name__)

IE_MEAN, TOP_SITES = "ie_mean.csv", "top_sites"  # the tables written (top_sites as .csv and .md)
COMPONENT, LAYER, POSITIONS, MEAN_IE, STD, PAIRS = "component", "layer", "positions", "mean IE", "std", "pairs"


def component_figure(component: str) -> str:
    """The file name of a component's layer x position-group heatmap of mean IE."""
    return f"ie_{component}.png"


def head_figure(what: str, group: str) -> str:
    """The file name of a layer x head heatmap: `what` heads or scores, `group` a position group or score block."""
    return f"ie_{what}_{group.replace('>', '_to_')}.png"


def patch_layers(settings: PatchSettings, depth: int) -> list[int]:
    """The layers to patch, checked against the model's depth as soon as it is known (before any pair is built)."""
    if settings.layers is None:
        return list(range(depth))
    beyond = [layer for layer in settings.layers if layer >= depth]
    if beyond:
        raise ConfigError(f"--layers {' '.join(map(str, beyond[:5]))}: the model has {depth} layers; use layers 0 "
                          f"to {depth - 1}")
    return list(settings.layers)


def patch_job(settings: PatchSettings, out: str | Path, progress: bool = True) -> dict:
    """Patch every site over the pairs of `settings`; ie.npz, tables, heatmaps and a manifest in `out`."""
    state = process_state()
    out = Path(out)
    loaded, head, builder = load_patch_model(settings, process_device())
    depth = len(loaded.spec.layer_list(loaded.model))
    layers = patch_layers(settings, depth)
    pairs, report = build_pairs(pair_groups(settings.groups), builder, settings.max_pairs, settings.negative_kind,
                                perturbation=settings.perturbation)
    sites = [s for s in all_sites(depth, settings.components, settings.positions) if s.layer in layers]
    engine = PatchingEngine(loaded.model, loaded.spec, head, settings.batch_size)
    sweeper = FastPatcher(engine) if settings.fast else engine  # equal results (tested); the fast one recomputes less
    show = progress and state.is_main_process
    # Keyed on what the model is (the adapter's bytes, the base's files, relscope's version), not on its path:
    # an adapter retrained into the same folder must not get the old one's pairs. Hashed once per job.
    revision = getattr(loaded.model.config, "_commit_hash", None)  # a hub model's commit
    adapter = settings.adapter or preset_adapter(settings)  # resolved once: a hub id is looked up in the cache
    fingerprint = {**cache_identity(loaded.source, adapter, revision),
                   "template": builder.template.name,
                   "dtype": str(next(loaded.model.parameters()).dtype)}
    cache = PairCache(out / "pairs", fingerprint)
    # Which pairs have a gap worth dividing by is known from two forwards per pair (or their cached sweep), so an
    # excluded pair is never swept and a run with none left stops before anything is written.
    gaps = np.array(over_items(lambda pair: cache.gap(pair, "sites", sites, sweeper), pairs, "gaps", show))
    _check_finite(gaps, "the clean - corrupted logit difference", engine)
    keep = (np.abs(gaps) >= settings.min_gap) & (gaps != 0)  # a zero gap has no IE, whatever --min-gap says
    kept_pairs = [p for p, k in zip(pairs, keep) if k]  # by pair: pairs of one query can fall on both sides
    excluded = [p.qid for p, k in zip(pairs, keep) if not k]
    if not kept_pairs:
        raise DataError(f"no pair left to patch: all {len(pairs)} pairs have |LD_clean - LD_corrupted| below --min-gap "
                        f"{settings.min_gap} (the largest is {np.abs(gaps).max():.3g}); lower --min-gap or use other "
                        "groups")
    effects = Effects(settings, sweeper, engine, cache, kept_pairs, show)
    exact, estimated = effects.of(sites, "sites")
    results, method = (exact, EXACT) if exact is not None else (estimated, effects.method)  # ie.npz: exact if run
    ie, _ = indirect_effects(results, 0.0)  # checked finite in Effects.of
    shape = (len(settings.components), len(layers), len(settings.positions))  # all_sites' order
    grid = ie.reshape(len(ie), *shape)
    summary = {"pairs": report.pairs, "skipped_misaligned": report.skipped_misaligned,
               "skipped_no_negative": report.skipped_no_negative, "skipped_identical": report.skipped_identical,
               "excluded_small_gap": excluded, "min_gap": settings.min_gap, "sites": len(sites),
               "processes": state.num_processes, "method": method}
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _write_grid(out, grid, results, settings, layers, loaded.name, method)
    compared = [(sites, exact, estimated)]  # each sweep's (sites, exact, estimated), for --validate
    n_heads = engine.n_heads
    if settings.heads:
        groups = list(settings.head_positions)
        head_list = [s for s in head_sites(depth, n_heads, groups) if s.layer in layers]
        compared.append((head_list, *_head_sweep(effects, head_list, groups, layers, out, loaded.name, "heads")))
    if settings.scores:
        blocks = score_blocks(settings.query_block)
        score_list = score_sites(layers, n_heads, blocks)
        compared.append((score_list, *_head_sweep(effects, score_list, blocks, layers, out, loaded.name, "scores")))
    if settings.qk:
        groups = list(settings.head_positions)
        for what, qk_list in zip(("queries", "keys"), qk_sites(layers, n_heads, engine.n_kv_heads, groups)):
            compared.append((qk_list, *_head_sweep(effects, qk_list, groups, layers, out, loaded.name, what)))
    if settings.validate and state.is_main_process:  # the main process holds every pair's results
        summary["validation"] = _validate(out, compared, settings, layers, shape, loaded.name, depth)
    summary["forwards"] = engine.forwards  # this process's
    if state.is_main_process:
        recorded = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}
        atomic_write_json(out / "manifest.json", build_manifest(
            {**recorded, "model": loaded.source, "template": builder.template.name, "layout": builder.template.layout,
             "adapter": adapter, "layers": layers}, {},
            **summary))
    return summary


class PairCache:
    """Each pair's result kept in `folder` as it is done: a rerun (after a crash, or over more pairs) recomputes only
    the pairs whose prompts, sites or model settings changed. A file's name carries the hash of all of them."""

    def __init__(self, folder: Path, fingerprint: dict) -> None:
        self.folder, self.fingerprint = folder, fingerprint

    def path(self, pair: PatchPair, what: str, sites: Sequence[Site]) -> Path:
        """The pair's file: named by `what`, the qid and a hash of the prompts, the sites and the fingerprint."""
        key = json.dumps({**self.fingerprint, "what": what, "sites": [astuple(s) for s in sites],
                          "clean": list(pair.clean.input_ids), "corrupted": list(pair.corrupted.input_ids)},
                         sort_keys=True)
        label = re.sub(r"[^\w.-]", "_", pair.qid)[:32]  # for people only (the hash keys it): no '/', no long names
        return self.folder / f"{what}-{label}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"

    def load(self, pair: PatchPair, what: str, sites: Sequence[Site]) -> PairResult | None:
        """The pair's cached result; None when it is not cached or its file is damaged (then it is recomputed)."""
        saved = load_pair_result(self.path(pair, what, sites), len(sites))
        return None if saved is None else PairResult(pair.qid, *saved)

    def gap(self, pair: PatchPair, what: str, sites: Sequence[Site], sweeper: PatchingEngine | FastPatcher) -> float:
        """LD_clean - LD_corrupted as the sweep has (or will have) them: from the cache, else two forwards."""
        saved = self.load(pair, what, sites)
        clean, corrupted = (saved.clean, saved.corrupted) if saved is not None else sweeper.end_points(pair)
        return clean - corrupted

    def wrap(self, fn: Callable[[PatchPair], PairResult], what: str,
             sites: Sequence[Site]) -> Callable[[PatchPair], PairResult]:
        """`fn` answering from the cache when it can, and saving each result it computes."""
        def cached(pair: PatchPair) -> PairResult:
            path = self.path(pair, what, sites)
            saved = self.load(pair, what, sites)
            if saved is not None:
                return saved
            result = fn(pair)
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, tmp.open("wb") as f:
                np.savez(f, clean=result.clean, corrupted=result.corrupted, patched=result.patched)
            return result
        return cached


def load_patch_model(settings: PatchSettings, device: str) -> tuple[LoadedModel, Head, PromptBuilder]:
    """(loaded model, head, prompt builder): the base model, or base + adapter merged, with its template."""
    from relscope.models.adapters import load_preset_adapter, load_trained, resolve_max_length
    from relscope.models.heads import build_head, default_head
    from relscope.models.load import load_model
    from relscope.prompts.presets import preset_for
    from relscope.prompts.templates import get_template
    from relscope.prompts.tokenize import PromptBuilder

    max_length = resolve_max_length(settings.max_length, settings.adapter, 256)
    if settings.adapter:
        loaded, head, meta = load_trained(settings.adapter, dtype=settings.dtype, device=device, merge=True,
                                          model=settings.model, template=settings.template)
        template = get_template(meta["template"])
        template = template.with_layout(settings.layout) if template.parts else own_order(template, settings.layout)
        return loaded, head, PromptBuilder(loaded.tokenizer, template, max_length)
    preset = None if settings.template else preset_for(settings.model)
    if preset is not None:  # a published reranker: its own prompt (in its own order) and head
        template = own_order(get_template(preset.template), settings.layout)
        if settings.scores:  # the block was checked against --layout; the preset's own order is what runs
            check_block_layout(settings.query_block, template.layout, "--query-block")
        if preset.base_model:  # an adapter with a trained head (RankLLaMA)
            loaded, head, _ = load_preset_adapter(settings.model, preset, settings.dtype, device, merge=True)
            return loaded, head, PromptBuilder(loaded.tokenizer, template, max_length)
        loaded = load_model(settings.model, dtype=settings.dtype, device=device)
        builder = PromptBuilder(loaded.tokenizer, template, max_length)
        return loaded, build_head(preset.head, loaded.model, builder), builder
    loaded = load_model(settings.model, dtype=settings.dtype, device=device)
    builder = PromptBuilder(loaded.tokenizer, get_template(settings.template or "yes_no", settings.layout), max_length)
    return loaded, build_head(default_head(builder.template), loaded.model, builder), builder


def preset_adapter(settings: PatchSettings) -> str | None:
    """The folder of the published adapter `settings.model` names (RankLLaMA), which the pair cache and the manifest
    must identify as they identify an --adapter; None for any other model."""
    from relscope.models.adapters import adapter_folder
    from relscope.prompts.presets import preset_for

    preset = None if settings.adapter or settings.template else preset_for(settings.model)
    return str(adapter_folder(settings.model)) if preset is not None and preset.base_model else None


def own_order(template: PromptTemplate, layout: str) -> PromptTemplate:
    """A one-text template (a published reranker's) in its own order: the analyses' default layout gives way to it,
    another layout asked for is refused rather than silently ignored."""
    if layout not in (STUDY_LAYOUT, template.layout):
        raise ConfigError(f"--layout {layout}: template {template.name!r} is a published reranker's prompt in one "
                          f"order ({template.layout}); leave --layout unset, or give --template to patch another "
                          "prompt")
    if layout != template.layout:
        log.info("template %s: patched in its own order, %s", template.name, template.layout)
    return template


def pair_groups(source: str) -> list[TrainingGroup]:
    """Groups from a Tevatron group jsonl, or built from a TREC folder's qrels and passages."""
    from relscope.data.training import load_training_groups

    return load_training_groups((source,), negatives=7)


def _check_finite(values: np.ndarray, what: str, engine: PatchingEngine) -> None:
    """A non-finite logit difference (float16 overflow, broken weights) would be a silent NaN in every table."""
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise ModelError(f"{bad} values of {what} are not finite{overflow_hint(next(engine.model.parameters()).dtype)}")


def _write_grid(out: Path, grid: np.ndarray, kept: list[PairResult], settings: PatchSettings, layers: list[int],
                name: str, method: str, file: str = IE_FILE) -> None:
    components, positions = list(settings.components), list(settings.positions)
    with atomic_path(out / file) as tmp, tmp.open("wb") as f:
        np.savez(f, ie=grid, components=np.array(components), layers=np.array(layers), groups=np.array(positions),
                 qids=np.array([r.qid for r in kept]), ld_clean=np.array([r.clean for r in kept]),
                 ld_corrupted=np.array([r.corrupted for r in kept]), method=np.array(method))
    if file != IE_FILE:  # an estimate beside the exact grid (--validate): the arrays only
        return
    label = "mean IE" if method == EXACT else f"mean IE estimated by {method}"
    mean, std = grid.mean(axis=0), grid.std(axis=0)
    rows = [{COMPONENT: c, LAYER: layer, POSITIONS: g, MEAN_IE: float(mean[i, j, k]), STD: float(std[i, j, k]),
             PAIRS: len(grid)}
            for i, c in enumerate(components) for j, layer in enumerate(layers) for k, g in enumerate(positions)]
    atomic_write_text(out / IE_MEAN, to_csv(rows))
    ranked = sorted((r for r in rows if r[POSITIONS] != "all"), key=lambda r: -abs(r[MEAN_IE]))[:settings.top]
    write_table(ranked, out / TOP_SITES, f"Top {settings.top} sites by |{label}| ({len(grid)} pairs; position "
                f"group 'all' left out)")
    for i, component in enumerate(components):
        plots.save(plots.heatmap(mean[i], [str(layer) for layer in layers], positions,
                                 f"{name}: {label}, {component} ({len(grid)} pairs)", "indirect effect",
                                 xlabel="position group", ylabel="layer", diverging=True),
                   out / component_figure(component))


EXACT = "exact"  # the method of exact patching's outputs (the others are sites.ESTIMATORS)


class Effects:
    """Each sweep's results over the kept pairs: exact patching's, an estimator's, or both (--validate). Every
    pair's result is cached under its method's name (and --ig-steps), so a rerun with another method reuses the
    exact ones."""

    def __init__(self, settings: PatchSettings, sweeper, engine: PatchingEngine, cache: PairCache,
                 pairs: list[PatchPair], progress: bool) -> None:
        self.settings, self.sweeper, self.engine, self.cache = settings, sweeper, engine, cache
        self.pairs, self.progress = pairs, progress
        self.method = settings.attribution or EXACT

    def estimate(self, pair: PatchPair, sites: Sequence[Site]) -> PairResult:
        """The configured estimator's result for one pair."""
        return estimate(self.method, self.engine, pair, sites, self.settings.ig_steps, self.settings.relp_rules)

    def of(self, sites: Sequence[Site], what: str) -> tuple[list[PairResult] | None, list[PairResult] | None]:
        """(exact results or None, estimated results or None) of every kept pair at `sites`."""
        exact = estimated = None
        if self.settings.attribution is None or self.settings.validate:
            exact = over_items(self.cache.wrap(lambda pair: self.sweeper.sweep(pair, sites), what, sites),
                               self.pairs, f"pairs ({what})", self.progress)
        if exact is not None:
            _check_finite(indirect_effects(exact, 0.0)[0], f"an indirect effect ({what})", self.engine)
        if self.settings.attribution is not None:
            key = f"{what}-{self.method}" + {"ig": str(self.settings.ig_steps),
                                              "relp": "-".join(sorted(self.settings.relp_rules))}.get(self.method, "")
            estimated = over_items(self.cache.wrap(lambda pair: self.estimate(pair, sites), key, sites), self.pairs,
                                   f"pairs ({what}, {self.method})", self.progress)
            _check_finite(indirect_effects(estimated, 0.0)[0], f"a {self.method} estimate ({what})", self.engine)
        return exact, estimated


def estimator_passes(method: str, ig_steps: int, depth: int, residual: bool = True) -> int:
    """Passes of one prompt an estimator runs per pair, a backward counted as one (as RelP and AtP* count "two
    forwards and one backward"; in FLOPs a backward is about two forwards); `residual`: whether the sweep estimated
    in the same call has residual-stream sites (only atp-nearest's cost depends on it)."""
    if method == "ig":
        return 1 + 2 * ig_steps
    if method == "atp-nearest":
        return 4 if residual else 3  # a forward and a backward of each prompt; AtP's passes without residual sites
    return 2 + depth if method == "atp-star" else 3  # atp, relp: clean forward, corrupted forward + backward


def _validate(out: Path, compared: list, settings: PatchSettings, layers: list[int], shape: tuple[int, ...],
              name: str, depth: int) -> list[dict]:
    """Agreement of the estimates with the exact IEs per site type; the site estimates, a table and a figure
    written."""
    method = settings.attribution
    sites = [site for group, _, _ in compared for site in group]
    exact = np.concatenate([indirect_effects(e, 0.0)[0] for _, e, _ in compared], axis=1)
    estimated = np.concatenate([indirect_effects(e, 0.0)[0] for _, _, e in compared], axis=1)
    rows = agreement(exact, estimated, sites, unsigned=method in UNSIGNED_ESTIMATORS)
    # the site types estimated in one call with residual sites (atp-nearest's clean backward serves that call)
    with_residual = {site_type(s) for group, _, _ in compared if any(x.component in RESIDUAL for x in group)
                     for s in group}
    for row in rows:
        # both prompts' attention read once for score, query and key sites
        recording = 2 if row["site type"] in ("score block", "query", "key") else 0
        residual = row["site type"] in with_residual
        row["passes per pair"] = estimator_passes(method, settings.ig_steps, depth, residual) + recording
        row["exact passes per pair"] = 2 + recording + row["sites"]  # naive: both runs, a patched forward a site
    first = indirect_effects(compared[0][2], 0.0)[0]
    _write_grid(out, first.reshape(len(first), *shape), compared[0][2], settings, layers, name, method,
                f"ie_{method}.npz")
    write_table(rows, out / VALIDATION, f"{method} against exact patching per site type ({len(exact)} pairs; "
                "Pearson and Spearman over every pair and site, top-20 recall of the mean IEs)")
    unsigned = method in UNSIGNED_ESTIMATORS  # an estimate of |IE| is drawn against the exact |IE|
    what = "|IE|" if unsigned else "IE"
    plots.save(plots.agreement(np.abs(exact) if unsigned else exact, estimated, [site_type(s) for s in sites],
                               f"{name}: {method} estimate vs exact {what} ({len(exact)} pairs)", method, what),
               out / validation_figure(method))
    return rows


def validation_figure(method: str) -> str:
    """The file name of the estimate-vs-exact scatter of a --validate run."""
    return f"validation_{method}.png"


VALIDATION = "validation"  # validation.csv and validation.md


def _head_sweep(effects: Effects, sites: Sequence[Site], groups: Sequence[str], layers: list[int], out: Path,
                name: str, what: str) -> tuple[list[PairResult] | None, list[PairResult] | None]:
    """Every head of every layer for each group (per-head outputs, queries or keys at a position group, or
    attention-score blocks); sites ordered group, layer, head (a key/value head for keys). Writes ie_<what>.npz
    (with --validate also ie_<what>_<method>.npz) and one layer x head heatmap per group; returns (exact,
    estimated) results."""
    exact, estimated = effects.of(sites, what)
    if not process_state().is_main_process:
        return exact, estimated
    n_heads = len(sites) // (len(groups) * len(layers))
    shown = exact if exact is not None else estimated
    outputs = [(shown, head_ie_file(what), effects.method if exact is None else EXACT)]
    if exact is not None and estimated is not None:
        outputs.append((estimated, head_ie_file(f"{what}_{effects.method}"), effects.method))
    for results, file, method in outputs:
        ie, _ = indirect_effects(results, 0.0)
        with atomic_path(out / file) as tmp, tmp.open("wb") as f:
            np.savez(f, ie=ie.reshape(len(ie), len(groups), len(layers), n_heads), groups=np.array(groups),
                     layers=np.array(layers), qids=np.array([r.qid for r in results]), method=np.array(method),
                     head_axis=np.array("key/value head" if what == "keys" else "head"))
    grid = indirect_effects(shown, 0.0)[0].reshape(-1, len(groups), len(layers), n_heads)
    label = {"heads": "positions", "scores": "attention weights", "queries": "query vectors",
             "keys": "key vectors"}[what]
    value = "mean IE" if exact is not None else f"mean IE estimated by {effects.method}"
    for g, group in enumerate(groups):
        plots.save(plots.heatmap(grid[:, g].mean(axis=0), [str(layer) for layer in layers],
                                 [str(h) for h in range(n_heads)],
                                 f"{name}: {value} per head, {group} {label} ({len(grid)} pairs)", "indirect effect",
                                 xlabel="head", ylabel="layer", diverging=True),
                   out / head_figure(what, group))
    return exact, estimated
