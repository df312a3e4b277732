"""`relscope study`: the whole study in stages and its report."""

from __future__ import annotations

import argparse


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


def register(commands: argparse._SubParsersAction) -> None:
    """Add study to the `relscope` subcommands."""
    _add_study(commands.add_parser("study", help="the whole study in stages (resumable) and its HTML report"))
