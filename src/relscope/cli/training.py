"""Commands that train or read training runs: train, lora, dynamics, freeze."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from relscope.analysis.settings import (
    AblateSettings,
    CheckpointsSettings,
    DynamicsSettings,
    FreezeSettings,
    StatsSettings,
    SweepRankSettings,
)
from relscope.cli.commands import Command, add_command, locked, print_table
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




def _lora_job(function: str) -> Callable[[object, argparse.Namespace], int]:
    """`relscope lora <job>`: the anatomy function of that name, its table printed with the best nDCG@10 in bold."""

    def run(settings: object, args: argparse.Namespace) -> int:
        from relscope.analysis import anatomy

        print_table(locked(getattr(anatomy, function), settings, args.out), args.out, bold_best="nDCG@10")
        return 0

    return run


LORA_COMMANDS = (
    Command("checkpoints", "evaluate every checkpoint of a training run on a dev run", CheckpointsSettings,
            _lora_job("evaluate_checkpoints"), out="output folder (csv, md, png, manifest.json)"),
    Command("sweep-rank", "train one config at several LoRA ranks and tabulate them", SweepRankSettings,
            _lora_job("sweep_rank"), out="output folder (csv, md, png, manifest.json)"),
    Command("ablate", "metrics with the LoRA update kept only in some modules/layers", AblateSettings,
            _lora_job("ablate"), out="output folder (csv, md, png, manifest.json)"),
    Command("stats", "Frobenius norm, spectrum and effective rank of every delta W", StatsSettings,
            _lora_job("adapter_stats"), out="output folder (csv, md, png, manifest.json)"),
)


def _dynamics(settings: DynamicsSettings, args: argparse.Namespace) -> int:
    from relscope.analysis.dynamics import analyse_dynamics

    summary = locked(analyse_dynamics, settings, args.out)
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


def _freeze(settings: FreezeSettings, args: argparse.Namespace) -> int:
    from relscope.analysis.freeze import freeze_sweep

    print_table(locked(freeze_sweep, settings, args.out), args.out, bold_best="nDCG@10")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add train, lora and dynamics to the `relscope` subcommands."""
    _add_train(commands.add_parser("train", help="fine-tune a causal LM as a reranker with LoRA"))
    lora = commands.add_parser("lora", help="LoRA anatomy: checkpoints, rank sweep, ablation, delta stats")
    jobs = lora.add_subparsers(dest="job", required=True)
    for command in LORA_COMMANDS:
        add_command(jobs, command)
    add_command(commands, Command("dynamics", "training curves, the loss cliff, per-layer gradient norms",
                                  DynamicsSettings, _dynamics,
                                  out="output folder (csv, md, png, summary.json, manifest.json)"))


def register_freeze(commands: argparse._SubParsersAction) -> None:
    """Add freeze to the `relscope` subcommands (apart, so that it is listed after the mechanism commands)."""
    add_command(commands, Command("freeze", "train with only some layer groups trainable; compare them",
                                  FreezeSettings, _freeze,
                                  out="output folder: one training run per variant, the table, a figure"))
