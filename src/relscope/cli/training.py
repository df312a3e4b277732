"""Commands that train or read training runs: train, lora, dynamics, freeze."""

from __future__ import annotations

import argparse

from relscope.analysis.settings import (
    AblateSettings,
    CheckpointsSettings,
    DynamicsSettings,
    FreezeSettings,
    StatsSettings,
    SweepRankSettings,
)
from relscope.cli.flags import add_output, add_settings, settings_from
from relscope.training.config import load_train_config


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
    config = load_train_config(args.config, args.set)
    from relscope.training.job import run_train_job  # after the config is checked: it imports torch

    summary = run_train_job(config, args.out, resume=args.resume, progress=not args.quiet)
    print(f"trained {summary['steps']} steps; last checkpoint {summary['last_checkpoint']}")
    print(f"rerank with it: relscope rerank --adapter {summary['last_checkpoint']} --out <folder>")
    return 0



# relscope lora <job>: its settings, the function of relscope.analysis.anatomy that runs it, its help
_LORA_JOBS = {
    "checkpoints": (CheckpointsSettings, "evaluate_checkpoints", "evaluate every checkpoint of a training run on a "
                    "dev run"),
    "sweep-rank": (SweepRankSettings, "sweep_rank", "train one config at several LoRA ranks and tabulate them"),
    "ablate": (AblateSettings, "ablate", "metrics with the LoRA update kept only in some modules/layers"),
    "stats": (StatsSettings, "adapter_stats", "Frobenius norm, spectrum and effective rank of every delta W"),
}


def _add_lora(p: argparse.ArgumentParser) -> None:
    jobs = p.add_subparsers(dest="job", required=True)
    for name, (settings, _, help) in _LORA_JOBS.items():
        job = jobs.add_parser(name, help=help)
        add_settings(job, settings)
        add_output(job, quiet=False, what="output folder (csv, md, png, manifest.json)")
        job.set_defaults(handler=_lora)


def _lora(args: argparse.Namespace) -> int:
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    cls, function, _ = _LORA_JOBS[args.job]
    settings = settings_from(cls, args, f"relscope lora {args.job}")  # checked before torch is imported
    from relscope.analysis import anatomy

    with output_lock(args.out):  # two jobs on one folder would leave a mix of both tables
        rows = getattr(anatomy, function)(settings, args.out)
    print(to_markdown(rows, bold_best="nDCG@10" if "nDCG@10" in rows[0] else None), end="")
    print(f"outputs: {args.out}/")
    return 0


def _add_dynamics(p: argparse.ArgumentParser) -> None:
    add_settings(p, DynamicsSettings)
    add_output(p, quiet=False, what="output folder (csv, md, png, summary.json, manifest.json)")
    p.set_defaults(handler=_dynamics)


def _dynamics(args: argparse.Namespace) -> int:
    from relscope.io import output_lock

    settings = settings_from(DynamicsSettings, args, "relscope dynamics")  # checked before torch is imported
    from relscope.analysis.dynamics import analyse_dynamics

    with output_lock(args.out):
        summary = analyse_dynamics(settings, args.out)
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


def _add_freeze(p: argparse.ArgumentParser) -> None:
    add_settings(p, FreezeSettings)
    add_output(p, quiet=False, what="output folder: one training run per variant, the table, a figure")
    p.set_defaults(handler=_freeze)


def _freeze(args: argparse.Namespace) -> int:
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    settings = settings_from(FreezeSettings, args, "relscope freeze")  # checked before torch is imported
    from relscope.analysis.freeze import freeze_sweep

    with output_lock(args.out):
        rows = freeze_sweep(settings, args.out)
    print(to_markdown(rows, bold_best="nDCG@10"), end="")
    print(f"outputs: {args.out}/")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    _add_train(commands.add_parser("train", help="fine-tune a causal LM as a reranker with LoRA"))
    _add_lora(commands.add_parser("lora", help="LoRA anatomy: checkpoints, rank sweep, ablation, delta stats"))
    _add_dynamics(commands.add_parser("dynamics", help="training curves, the loss cliff, per-layer gradient norms"))


def register_freeze(commands: argparse._SubParsersAction) -> None:
    _add_freeze(commands.add_parser("freeze", help="train with only some layer groups trainable; compare them"))
