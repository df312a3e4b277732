"""The relscope command line: thin parsing over the Python API, imports deferred to the command.

Errors a user can cause print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from relscope.errors import ConfigError, RelscopeError
from relscope.measures import DEFAULT_MEASURES


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # PEFT 0.21 reads a property transformers 5 deprecated; the warning says nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    try:
        return args.handler(args)
    except RelscopeError as err:
        print(f"relscope: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # the environment's refusal (permissions, a full disk): the file and the reason
        where = f"{err.filename}: " if err.filename else ""
        print(f"relscope: error: {where}{err.strerror or err}; check the path, its permissions and free space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relscope: interrupted", file=sys.stderr)
        return 130


RELEVANCE_GROUPS = "$RELSCOPE_DATA/relevance-mi/msmarco.jsonl"  # the patching study's 183 MS MARCO queries


def one_line(text: str) -> str:
    """An error message on one line, whatever it quotes."""
    return " ".join(text.split())


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors in one line (usage is one `--help` away) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="relscope", description="How does relevance emerge inside an LLM reranker?")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_study(commands.add_parser("study", help="the whole study in stages (resumable) and its HTML report"))
    _add_rerank(commands.add_parser("rerank", help="rerank a first-stage run with an LLM and evaluate it"))
    _add_evaluate(commands.add_parser("evaluate", help="evaluate a TREC run with ir_measures"))
    _add_groups(commands.add_parser("groups", help="build training groups (Tevatron jsonl) from judgments"))
    _add_fuse(commands.add_parser("fuse", help="interpolate runs (a reranker with its first stage) and evaluate"))
    _add_train(commands.add_parser("train", help="fine-tune a causal LM as a reranker with LoRA"))
    _add_lora(commands.add_parser("lora", help="LoRA anatomy: checkpoints, rank sweep, ablation, delta stats"))
    _add_dynamics(commands.add_parser("dynamics", help="training curves, the loss cliff, per-layer gradient norms"))
    _add_patch(commands.add_parser("patch", help="activation patching: IE per layer x component x position group"))
    _add_heads(commands.add_parser("heads", help="per head: attention interaction score, logit lens, direct effect"))
    _add_knockout(commands.add_parser("knockout", help="mean-ablate head sets; judgment F1 and nDCG@10 drops"))
    _add_compare(commands.add_parser("compare", help="do two patch runs rely on the same components? RBO, Spearman"))
    _add_freeze(commands.add_parser("freeze", help="train with only some layer groups trainable; compare them"))
    _add_representation(commands.add_parser("probe", help="linear probes and PCA on each layer's last-token state"),
                        _probe)
    _add_representation(commands.add_parser("attention", help="attention mass from document to query tokens"),
                        _attention)
    return parser


def _add_study(p: argparse.ArgumentParser) -> None:
    from relscope.study.stages import STAGE_NAMES

    p.add_argument("config", help="a study YAML (configs/study-cpu.yaml, configs/study-gpu.yaml)")
    p.add_argument("--out", help="output folder (default runs/study-<name>); an interrupted study there resumes")
    p.add_argument("--force", action="append", default=[], choices=list(STAGE_NAMES), metavar="STAGE",
                   help="redo this stage even if complete (repeatable): " + ", ".join(STAGE_NAMES))
    p.add_argument("--quiet", action="store_true", help="no per-stage progress bars")
    p.set_defaults(handler=_study)


def _study(args: argparse.Namespace) -> int:
    from relscope.study.config import load_study_config
    from relscope.study.runner import run_study

    config = load_study_config(args.config)
    out = args.out or f"runs/study-{config.name}"
    manifest = run_study(config, out, args.force, progress=not args.quiet, source=args.config)
    total = manifest["seconds_all_stages"] / 60
    ran = sum(s["status"] == "ran" for s in manifest["stages"].values())
    print(f"{ran} stage(s) run, {len(manifest['stages']) - ran} reused; stage time {total:.1f} min"
          + (f" (budget {config.budget_minutes:g} min)" if config.budget_minutes else ""))
    print(f"report: {out}/report.html (and report.md)")
    return 0


def _add_rerank(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of RerankConfig keys; flags given here override it")
    p.add_argument("--model", help="HF id, local folder, .gguf file or packaged alias (default smollm2-135m-instruct)")
    p.add_argument("--data", help="TREC folder with queries.tsv, collection.tsv, qrels.txt, run.bm25.txt "
                                  "(default $RELSCOPE_DATA/trec-dl-2019)")
    for name in ("queries", "collection", "qrels", "run"):
        p.add_argument(f"--{name}", help=f"explicit {name} file (overrides the folder's)")
    p.add_argument("--rankllm", help="a rank_llm request json (queries, candidates and their text) instead")
    p.add_argument("--adapter", help="a checkpoint-<step>/ folder of relscope train (uses its model, template, head)")
    p.add_argument("--top-k", type=int, help="rerank this many first-stage passages per query (default 100)")
    p.add_argument("--max-queries", type=int, help="the run's first n queries only (default: all)")
    p.add_argument("--template", help="prompt template: yes_no, score, pairwise (default: the adapter's, else yes_no)")
    p.add_argument("--head", help="scoring head: yes_no, linear, ab (default: the template's)")
    p.add_argument("--max-length", type=int, help="prompt tokens; passages are truncated to fit (default: the "
                                                  "adapter's, what it was trained with; else 512)")
    p.add_argument("--max-batch-tokens", type=int,
                   help="padded tokens per forward (default: 1024 on CPU, 16384 on CUDA)")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_const", const=False,
                   help="do not reuse the KV cache of each query's shared prompt prefix")
    p.add_argument("--on-missing", choices=["error", "skip"], help="a run passage without text: fail or skip")
    p.add_argument("--measures", nargs="+", help="ir_measures strings (default nDCG@10 RR(rel=2)@10 AP(rel=2))")
    p.add_argument("--dtype", help="auto (default), float32, bfloat16, float16")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_rerank)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--qrels", required=True, help="TREC qrels file")
    p.add_argument("--run", required=True, help="TREC run file")
    p.add_argument("--measures", nargs="+", default=list(DEFAULT_MEASURES), help="ir_measures strings")
    p.add_argument("--per-query", action="store_true", help="also print one line per query")
    p.set_defaults(handler=_evaluate)


def _add_fuse(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", action="append", required=True, help="a TREC run; repeat (first: its queries and order)")
    p.add_argument("--weights", type=float, nargs="+", required=True, help="one fixed weight per run")
    p.add_argument("--norm", default="zscore", help="per-query score normalisation: zscore, minmax, rrf")
    p.add_argument("--qrels", help="evaluate each input run and the fused one")
    p.add_argument("--measures", nargs="+", default=list(DEFAULT_MEASURES), help="ir_measures strings")
    p.add_argument("--out", required=True, help="the fused TREC run")
    p.set_defaults(handler=_fuse)


def _fuse(args: argparse.Namespace) -> int:
    from relscope.data.trec import read_qrels, read_run, write_run
    from relscope.evaluation.fusion import check_fusion, fuse_runs
    from relscope.evaluation.metrics import evaluate_run, parse_measures
    from relscope.io import check_output_file

    # every option and the output path before any run is read; every number before anything is written
    check_fusion(len(args.run), args.weights, args.norm)
    parse_measures(args.measures, "--measures")
    check_output_file(args.out, (*args.run, *([args.qrels] if args.qrels else [])))
    runs = [read_run(path) for path in args.run]
    qrels = read_qrels(args.qrels) if args.qrels else None
    fused = fuse_runs(runs, args.weights, args.norm, names=args.run)
    rows = []
    if qrels is not None:
        for name, run in [*zip(args.run, runs), (f"fused ({args.norm}, {args.weights})", fused)]:
            mean, _ = evaluate_run(qrels, run, args.measures, (args.qrels, name))
            rows.append("\t".join([name] + [f"{mean[m]:.4f}" for m in args.measures]))
    write_run(fused, args.out, tag=f"relscope-fuse-{args.norm}")
    if rows:
        print("\n".join(["\t".join(["run"] + args.measures), *rows]))
    print(f"fused run: {args.out}")
    return 0


def _add_groups(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True,
                   help="TREC folder with queries.tsv, collection.tsv, qrels.txt (and run.bm25.txt for hard "
                        "negatives); repeat to combine years, e.g. --data dl21 --data dl23")
    p.add_argument("--negatives", type=int, default=7, help="negatives a training step draws per group (default 7): "
                   "groups keep every hard negative, with random ones added where fewer are left")
    p.add_argument("--hard-fraction", type=float, default=1.0, help="share of hard negatives (default 1.0)")
    p.add_argument("--min-grade", type=int, default=2, help="lowest grade counted as positive (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .jsonl")
    p.set_defaults(handler=_groups)


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of TrainConfig keys (see configs/train-*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, dotted for nested ones, value in YAML: --set lora.rank=2 "
                        "--set lora.targets=[q,v] --set max_steps=50 (repeatable)")
    p.add_argument("--out", required=True, help="output folder; an interrupted run there is resumed")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start from scratch even if --out holds checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from relscope.training.job import run_train_job

    config = _train_config(args.config, args.set)
    summary = run_train_job(config, args.out, resume=args.resume, progress=not args.quiet)
    print(f"trained {summary['steps']} steps; last checkpoint {summary['last_checkpoint']}")
    print(f"rerank with it: relscope rerank --adapter {summary['last_checkpoint']} --out <folder>")
    return 0


def _train_config(path: str | None, overrides: list[str]):
    """A TrainConfig from a YAML file (or none) with `--set key.sub=value` overrides applied."""
    from relscope.config import from_mapping, load_yaml, set_dotted
    from relscope.training.config import TrainConfig

    values = load_yaml(path) if path else {}
    for item in overrides:
        set_dotted(values, item)
    return from_mapping(TrainConfig, values, path or "train options")


def _add_lora(p: argparse.ArgumentParser) -> None:
    jobs = p.add_subparsers(dest="job", required=True)
    checkpoints = jobs.add_parser("checkpoints", help="evaluate every checkpoint of a training run on a dev run")
    checkpoints.add_argument("run_dir", help="the --out folder of relscope train")
    checkpoints.add_argument("--epsilon", type=float, default=0.01,
                             help="converged = first step within epsilon of the best nDCG@10 (default 0.01)")
    sweep = jobs.add_parser("sweep-rank", help="train one config at several LoRA ranks and tabulate them")
    sweep.add_argument("--config", required=True, help="a train config (configs/train-*.yaml)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    sweep.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 8, 32])
    sweep.add_argument("--epsilon", type=float, default=0.01)
    ablate = jobs.add_parser("ablate", help="metrics with the LoRA update kept only in some modules/layers")
    ablate.add_argument("adapter", help="a checkpoint-<step>/ folder or any PEFT LoRA adapter folder")
    ablate.add_argument("--variants", nargs="+", help="'<modules>[@<layers>]': presets none, mlp-only, attn-only, "
                        "all, up+gate, down, or projections joined by '+'; layers like 5-15, 0-4+16-31, 0.5-1.0 "
                        "(default: the source study's Tables 3 and 4)")
    stats = jobs.add_parser("stats", help="Frobenius norm, spectrum and effective rank of every delta W")
    stats.add_argument("adapter", help="a checkpoint-<step>/ folder or any PEFT LoRA adapter folder")
    for job in (ablate, stats):
        job.add_argument("--model", help="base model of an external adapter (default: its adapter_config's)")
    ablate.add_argument("--template", help="prompt template of an external adapter (default yes_no)")
    for job in (checkpoints, sweep, ablate):
        job.add_argument("--data", default="$RELSCOPE_DATA/trec-dl-2019", help="dev TREC folder (default DL19)")
        job.add_argument("--top-k", type=int, default=20, help="rerank this many BM25 passages (default 20)")
        job.add_argument("--max-queries", type=int, help="the first n queries only")
    for job in (checkpoints, sweep, ablate, stats):
        job.add_argument("--out", required=True, help="output folder (csv, md, png, manifest.json)")
        job.set_defaults(handler=_lora)


def _lora(args: argparse.Namespace) -> int:
    from relscope.data.dev import DevSettings
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    dev = DevSettings(args.data, args.top_k, args.max_queries) if hasattr(args, "data") else None
    with output_lock(args.out):  # two jobs on one folder would leave a mix of both tables
        rows = _lora_job(args, dev)
    print(to_markdown(rows, bold_best="nDCG@10" if "nDCG@10" in rows[0] else None), end="")
    print(f"outputs: {args.out}/")
    return 0


def _lora_job(args: argparse.Namespace, dev) -> list[dict]:
    from relscope.analysis import anatomy

    if args.job == "checkpoints":
        rows = anatomy.evaluate_checkpoints(args.run_dir, args.out, dev, args.epsilon)
    elif args.job == "sweep-rank":
        rows = anatomy.sweep_rank(_train_config(args.config, args.set), args.ranks, args.out, dev, args.epsilon)
    elif args.job == "ablate":
        variants = args.variants or anatomy.DEFAULT_VARIANTS
        rows = anatomy.ablate(args.adapter, args.out, variants, dev, args.model, args.template)
    else:
        rows = anatomy.adapter_stats(args.adapter, args.out, args.model)
    return rows


def _add_dynamics(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the --out folder of relscope train (log.jsonl, grad_norms.npz)")
    p.add_argument("--window", type=int, default=25, help="smoothing window in steps for the loss cliff (default 25)")
    p.add_argument("--after", type=int, default=0, help="look for the cliff after this step only (default 0)")
    p.add_argument("--out", required=True, help="output folder (csv, md, png, summary.json, manifest.json)")
    p.set_defaults(handler=_dynamics)


def _dynamics(args: argparse.Namespace) -> int:
    from relscope.analysis.dynamics import analyse_dynamics
    from relscope.io import output_lock

    with output_lock(args.out):
        summary = analyse_dynamics(args.run_dir, args.out, args.window, args.after)
    cliff = summary["phase_transition"]
    print(f"steepest loss drop: steps {cliff['start_step']}-{cliff['end_step']} (middle {cliff['step']}), "
          f"smoothed loss {cliff['loss_before']:.4f} -> {cliff['loss_after']:.4f}")
    for other in summary["steepest_drops"][1:]:
        print(f"  next: steps {other['start_step']}-{other['end_step']}, {other['loss_before']:.4f} -> "
              f"{other['loss_after']:.4f}")
    if "grad_norms" in summary:
        means = summary["grad_norms"]["mean_by_group"]
        print("mean LoRA gradient norm: " + ", ".join(f"{k} {v:.4g}" if v is not None else f"{k} (no LoRA)"
                                                      for k, v in means.items()))
    print(f"outputs: {args.out}/")
    return 0


def _add_model_and_groups(p: argparse.ArgumentParser, verb: str) -> None:
    """The model (and adapter) to study and the clean/corrupted groups: shared by patch, heads and knockout."""
    p.add_argument("model", help="the model (alias, HF id, folder or .gguf)")
    p.add_argument("adapter", nargs="?", help=f"a checkpoint-<step>/ or PEFT adapter to {verb} instead of the base")
    p.add_argument("--groups", default=RELEVANCE_GROUPS,
                   help="Tevatron group jsonl, or a TREC folder (qrels + passages) to build groups from "
                        "(default: the 183-query MS MARCO set)")
    p.add_argument("--template", help="yes_no (clean: relevant, corrupted: non-relevant) or pairwise (swapped); "
                                      "default: the adapter's, else yes_no")
    p.add_argument("--negatives", default="hard", choices=["hard", "random", "any"], help="the non-relevant passage")


def _check_ie_heads(path: str | None) -> None:
    if path and not os.path.isfile(path):
        raise ConfigError(f"--ie-heads {path}: not found; give the ie_heads.npz of a `relscope patch --heads` run")


def _add_patch(p: argparse.ArgumentParser) -> None:
    from relscope.analysis.patching.pairs import PERTURBATIONS
    from relscope.analysis.patching.sites import COMPONENTS, HEAD_GROUPS, POSITION_GROUPS

    _add_model_and_groups(p, "patch")
    p.add_argument("--perturbation", default="negative", choices=list(PERTURBATIONS),
                   help="negative: relevant vs non-relevant passage (pairwise: swapped order); inject: the "
                        "non-relevant passage with vs without the query's words written in after its first word")
    p.add_argument("--max-pairs", type=int, default=20, help="pairs to patch (default 20; 0 for all)")
    p.add_argument("--components", nargs="+", default=list(COMPONENTS), choices=list(COMPONENTS))
    p.add_argument("--positions", nargs="+", default=list(POSITION_GROUPS), choices=list(POSITION_GROUPS))
    p.add_argument("--layers", type=int, nargs="+", help="layers to patch (default all)")
    p.add_argument("--min-gap", type=float, default=0.1,
                   help="exclude pairs whose |LD_clean - LD_corrupted| is below this (default 0.1)")
    p.add_argument("--max-length", type=int, help="prompt tokens (default: the adapter's, else 256)")
    p.add_argument("--batch-size", type=int, default=16, help="patch variants per forward (default 16)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--heads", action="store_true", help="also patch every head at each of --head-positions")
    p.add_argument("--head-positions", nargs="+", default=list(HEAD_GROUPS), choices=list(POSITION_GROUPS),
                   help="position groups of the per-head patching (default: last query all; knockouts use "
                        "document query instruction last)")
    p.add_argument("--scores", action="store_true", help="also patch every head's attention weights: document "
                   "tokens to query tokens, last token to document, last token to query")
    p.add_argument("--atp", action="store_true", help="also estimate every site by attribution patching and "
                   "report its correlation with the exact effects")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_patch)


def _patch(args: argparse.Namespace) -> int:
    from relscope.analysis.patching.job import PatchSettings, patch_job
    from relscope.processes import main_process_lock, process_state

    settings = PatchSettings(args.groups, args.model, args.adapter, args.template, args.max_pairs or None,
                             args.negatives, args.perturbation, tuple(args.components), tuple(args.positions),
                             args.layers, args.min_gap, args.max_length, args.batch_size, heads=args.heads,
                             head_positions=tuple(args.head_positions), scores=args.scores, atp=args.atp,
                             dtype=args.dtype)
    with main_process_lock(args.out):  # under accelerate launch only the main process writes
        summary = patch_job(args.out, settings, progress=not args.quiet)
    if not process_state().is_main_process:
        return 0
    print(f"{summary['pairs']} pairs ({len(summary['excluded_small_gap'])} excluded for a gap below "
          f"{summary['min_gap']}, {summary['skipped_misaligned']} misaligned skipped), {summary['sites']} sites, "
          f"{summary['processes']} process(es)")
    if "atp_vs_exact" in summary:
        print(f"attribution patching vs exact: Pearson r {summary['atp_vs_exact']['pearson_per_site']:.3f} per site "
              f"and pair, {summary['atp_vs_exact']['pearson_of_means']:.3f} of the mean IEs")
    print(f"outputs: {args.out}/ (ie.npz, ie_mean.csv, top_sites.md, ie_<component>.png)")
    return 0


def _add_heads(p: argparse.ArgumentParser) -> None:
    _add_model_and_groups(p, "analyse")
    p.add_argument("--max-pairs", type=int, default=50, help="pairs (default 50; 0 for all)")
    p.add_argument("--max-length", type=int, help="prompt tokens (default: the adapter's, else 256)")
    p.add_argument("--ie-heads", help="a patch run's ie_heads.npz: its top heads are outlined in the heatmaps")
    p.add_argument("--ie-group", default="last", help="the position group of --ie-heads to rank by (default last)")
    p.add_argument("--marked", type=int, default=10, help="how many top-IE heads to outline (default 10)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_heads)


def _heads(args: argparse.Namespace) -> int:
    from relscope.analysis.heads import heads_job
    from relscope.analysis.patching.job import PatchSettings
    from relscope.processes import main_process_lock, process_state
    from relscope.reports.tables import to_markdown

    _check_ie_heads(args.ie_heads)
    settings = PatchSettings(args.groups, args.model, args.adapter, args.template, args.max_pairs or None,
                             args.negatives, max_length=args.max_length)
    with main_process_lock(args.out):
        rows = heads_job(args.out, settings, args.ie_heads, args.ie_group, args.marked, progress=not args.quiet)
    if process_state().is_main_process:
        print(to_markdown(sorted(rows, key=lambda r: -abs(r["direct contribution"]))[:10]), end="")
        print(f"outputs: {args.out}/ (heads.csv, top_heads.md, interaction.png, direct.png)")
    return 0


def _add_knockout(p: argparse.ArgumentParser) -> None:
    from relscope.analysis.patching.sites import POSITION_GROUPS

    _add_model_and_groups(p, "knock out")
    p.add_argument("--ie-heads", required=True, help="the ie_heads.npz of a `relscope patch --heads` run (best with "
                   "--head-positions document query instruction last): it ranks the heads")
    p.add_argument("--max-groups", type=int, default=100, help="groups judged, two prompts each (default 100)")
    p.add_argument("--size", type=int, default=10, help="heads per set (default 10)")
    p.add_argument("--positions", nargs="+", default=["all"], choices=list(POSITION_GROUPS),
                   help="where the heads are ablated (default all)")
    p.add_argument("--zero", action="store_true", help="zero-ablate instead of mean-ablate")
    p.add_argument("--random-draws", type=int, default=3, help="random head sets (default 3)")
    p.add_argument("--data", help="a TREC folder to rerank for nDCG@10 (e.g. $RELSCOPE_DATA/trec-dl-2019)")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-queries", type=int)
    p.add_argument("--max-length", type=int, help="prompt tokens (default: the adapter's, else 256)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=_knockout)


def _knockout(args: argparse.Namespace) -> int:
    from relscope.analysis.knockout import knockout_job
    from relscope.analysis.patching.job import PatchSettings
    from relscope.data.dev import DevSettings
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    _check_ie_heads(args.ie_heads)
    settings = PatchSettings(args.groups, args.model, args.adapter, args.template, None, args.negatives,
                             max_length=args.max_length)
    dev = DevSettings(args.data, args.top_k, args.max_queries) if args.data else None
    with output_lock(args.out):
        rows = knockout_job(args.out, settings, args.ie_heads, args.size, args.positions, args.zero,
                            args.random_draws, args.max_groups, dev)
    print(to_markdown(rows), end="")
    print(f"outputs: {args.out}/ (knockout.md, knockout.png)")
    return 0


def _add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", help="a `relscope patch` output folder")
    p.add_argument("run_b", help="another, over the same components (or use --depth-bins)")
    p.add_argument("--heads", action="store_true", help="compare the per-head patching (ie_heads.npz)")
    p.add_argument("--p", type=float, default=0.9, help="RBO persistence: lower is more top-heavy (default 0.9)")
    p.add_argument("--top", type=int, default=20, help="top components listed and overlapped (default 20)")
    p.add_argument("--depth-bins", type=int, help="average layers into N slices of relative depth (models of "
                   "different depth)")
    p.add_argument("--signed", action="store_true", help="rank by signed mean IE instead of |mean IE|")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    from relscope.analysis.compare import compare_job
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    if not 0.0 < args.p < 1.0:
        raise ConfigError(f"--p {args.p}: RBO persistence must be between 0 and 1 (exclusive), e.g. 0.9")
    with output_lock(args.out):
        summary = compare_job(args.run_a, args.run_b, args.out, args.heads, args.p, args.top, args.depth_bins,
                              args.signed)
    print(to_markdown([summary]), end="")
    print(f"outputs: {args.out}/ (summary.md, top.md)")
    return 0


def _add_freeze(p: argparse.ArgumentParser) -> None:
    from relscope.analysis.freeze import DEFAULT_FREEZE_VARIANTS

    p.add_argument("--config", required=True, help="a train config (configs/train-*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_FREEZE_VARIANTS),
                   help="trainable layers: early, middle, late (thirds), joined by '+', all, or ranges like 0-9 "
                        "or 0.25-0.75 (default: early middle late early+middle all)")
    p.add_argument("--data", default="$RELSCOPE_DATA/trec-dl-2019", help="dev TREC folder (default DL19)")
    p.add_argument("--top-k", type=int, default=20, help="rerank this many BM25 passages (default 20)")
    p.add_argument("--max-queries", type=int, help="the first n queries only")
    p.add_argument("--out", required=True, help="output folder: one training run per variant, the table, a figure")
    p.set_defaults(handler=_freeze)


def _freeze(args: argparse.Namespace) -> int:
    from relscope.analysis.freeze import freeze_sweep
    from relscope.data.dev import DevSettings
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    with output_lock(args.out):
        rows = freeze_sweep(_train_config(args.config, args.set), args.variants, args.out,
                            DevSettings(args.data, args.top_k, args.max_queries))
    print(to_markdown(rows, bold_best="nDCG@10"), end="")
    print(f"outputs: {args.out}/")
    return 0


def _add_representation(p: argparse.ArgumentParser, handler) -> None:
    p.add_argument("model", help="the base model (alias, HF id, folder or .gguf)")
    p.add_argument("adapter", nargs="?", help="a checkpoint-<step>/ or PEFT adapter: base vs fine-tuned")
    p.add_argument("--groups", default=RELEVANCE_GROUPS,
                   help="Tevatron group jsonl of labelled examples (default: the 183-query MS MARCO set)")
    p.add_argument("--template", help="yes_no, score or pairwise (default: the adapter's, else yes_no)")
    p.add_argument("--max-groups", type=int, help="groups to use; two prompts each (default 100 probe, 25 attention)")
    p.add_argument("--layers", type=int, nargs="+", help="layers to analyse (default: all for probe, 5 for attention)")
    p.add_argument("--max-length", type=int, help="prompt tokens (default: the adapter's, else 256)")
    if handler is _probe:
        p.add_argument("--negatives", default="hard", choices=["hard", "random", "any"], help="negative kind")
        p.add_argument("--folds", type=int, default=5, help="cross-validation folds, split by query (default 5)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=handler)


def _probe(args: argparse.Namespace) -> int:
    from relscope.analysis.probe import probe_job
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    with output_lock(args.out):
        rows = probe_job(args.out, args.groups, args.model, args.adapter, args.template,
                         100 if args.max_groups is None else args.max_groups,
                         args.negatives, args.layers, args.folds, args.max_length)
    print(to_markdown(rows), end="")
    print(f"outputs: {args.out}/")
    return 0


def _attention(args: argparse.Namespace) -> int:
    from relscope.analysis.attention import attention_job
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    with output_lock(args.out):
        rows = attention_job(args.out, args.groups, args.model, args.adapter, args.template, args.layers,
                             25 if args.max_groups is None else args.max_groups, args.max_length)
    print(to_markdown(rows), end="")
    print(f"outputs: {args.out}/")
    return 0


def _groups(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relscope.data import write_groups
    from relscope.data.training import groups_from_trec_folder
    from relscope.io import check_output_file
    from relscope.measures import MAX_GRADE

    # options and the output path before any file is read (a collection takes minutes)
    if not 1 <= args.negatives <= 1000:  # every group line holds its negatives' text
        raise ConfigError(f"--negatives {args.negatives}: give 1 to 1000 negatives per group (default 7)")
    if not 0.0 <= args.hard_fraction <= 1.0:  # also refuses nan
        raise ConfigError(f"--hard-fraction {args.hard_fraction}: give a share from 0 to 1 (default 1.0)")
    if not 1 <= args.min_grade <= MAX_GRADE:
        raise ConfigError(f"--min-grade {args.min_grade}: give a grade from 1 to {MAX_GRADE} (grade 0 marks the "
                          "non-relevant passages; default 2)")
    inputs = ("queries.tsv", "qrels.txt", "collection.tsv", "run.bm25.txt")
    check_output_file(args.out, tuple(Path(folder) / name for folder in args.data for name in inputs))
    groups = []
    for folder in map(Path, args.data):
        built, report = groups_from_trec_folder(folder, args.negatives, args.hard_fraction, args.min_grade, args.seed)
        groups += built
        print(f"{folder}: {report.queries} queries, {report.groups} groups, {report.hard_negatives} hard + "
              f"{report.random_negatives} random negatives; {report.skipped_missing_text} judged pairs skipped "
              f"(no text); {report.queries_without_positive} queries without a positive")
    write_groups(groups, args.out)
    print(f"{len(groups)} groups -> {args.out}")
    return 0


def _rerank(args: argparse.Namespace) -> int:
    import dataclasses

    from relscope.config import RerankConfig, from_mapping, load_yaml
    from relscope.evaluation.job import run_rerank_job

    values = load_yaml(args.config) if args.config else {}
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(RerankConfig)}  # one flag per config key
    values.update({k: v for k, v in flags.items() if v is not None})
    config = from_mapping(RerankConfig, values, args.config or "rerank options")
    metrics = run_rerank_job(config, args.out, progress=not args.quiet)
    _print_comparison(metrics)
    print(f"outputs: {args.out}/ (run.trec, metrics.json, per_query.csv, manifest.json)")
    return 0


def _print_comparison(metrics: dict) -> None:
    print(f"{metrics['queries']} queries, {metrics['passages_scored']} passages scored in {metrics['seconds']:.1f} s "
          f"({metrics['passages_per_second']} passages/s, {metrics['tokens_per_second']} tokens/s)")
    if metrics.get("passages_missing_text"):
        print(f"{metrics['passages_missing_text']} run passages had no text and were kept below the reranked ones")
    if "reranked" in metrics:
        width = max(len(m) for m in metrics["reranked"]) + 2
        print(f"{'measure':<{width}}{'first stage':>12}{'reranked':>12}")
        for name, value in metrics["reranked"].items():
            print(f"{name:<{width}}{metrics['first_stage'][name]:>12.4f}{value:>12.4f}")


def _evaluate(args: argparse.Namespace) -> int:
    from relscope.data.trec import read_qrels, read_run
    from relscope.evaluation.metrics import evaluate_run, parse_measures

    # A run's ranking is its order as read: by score, ties by its rank column (then by line). trec_eval ignores
    # the rank column and breaks ties by document id; a run that states its ranks is evaluated in that order.
    parse_measures(args.measures, "--measures")  # before reading: a bad measure string must not wait for a big run
    qrels, run = read_qrels(args.qrels), read_run(args.run)
    mean, per_query = evaluate_run(qrels, run, args.measures, (args.qrels, args.run))
    if args.per_query:
        for qid in sorted(per_query):
            print("\t".join([qid] + [f"{per_query[qid][m]:.4f}" for m in args.measures]))
    for name, value in mean.items():
        print(f"{name}\tall\t{value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
