"""Commands over runs: rerank, evaluate, fuse, groups. Their flags come from the settings dataclasses."""

from __future__ import annotations

import argparse

from relscope.cli.flags import add_output, add_settings, settings_from
from relscope.data.training import GroupsSettings
from relscope.evaluation.settings import EvaluateSettings, FuseSettings, RerankConfig


def _add_rerank(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of RerankConfig keys; flags given here override it")
    add_settings(p, RerankConfig)
    add_output(p)
    p.set_defaults(handler=_rerank)


def _rerank(args: argparse.Namespace) -> int:
    from relscope.config import load_yaml

    values = load_yaml(args.config) if args.config else {}
    config = settings_from(RerankConfig, args, args.config or "rerank options", base=values)
    from relscope.evaluation.job import run_rerank_job  # after the options are checked: it imports torch

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



def _add_evaluate(p: argparse.ArgumentParser) -> None:
    add_settings(p, EvaluateSettings)
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from relscope.evaluation.metrics import evaluate_job

    settings = settings_from(EvaluateSettings, args, "relscope evaluate")
    mean, per_query = evaluate_job(settings)
    if settings.per_query:
        for qid in sorted(per_query):
            print("\t".join([qid] + [f"{per_query[qid][m]:.4f}" for m in settings.measures]))
    for name, value in mean.items():
        print(f"{name}\tall\t{value:.4f}")
    return 0


def _add_fuse(p: argparse.ArgumentParser) -> None:
    add_settings(p, FuseSettings)
    add_output(p, quiet=False, what="the fused TREC run (its manifest goes beside it: <out>.manifest.json)")
    p.set_defaults(handler=_fuse)


def _fuse(args: argparse.Namespace) -> int:
    from relscope.evaluation.fusion import fuse_job

    settings = settings_from(FuseSettings, args, "relscope fuse")
    rows = fuse_job(settings, args.out)
    if rows:
        print("\n".join(["\t".join(["run", *settings.measures]),
                         *("\t".join([row["run"]] + [f"{row[m]:.4f}" for m in settings.measures]) for row in rows)]))
    print(f"fused run: {args.out}")
    return 0


def _add_groups(p: argparse.ArgumentParser) -> None:
    add_settings(p, GroupsSettings)
    add_output(p, quiet=False, what="output .jsonl (its manifest goes beside it: <out>.manifest.json)")
    p.set_defaults(handler=_groups)


def _groups(args: argparse.Namespace) -> int:
    from relscope.data.training import groups_job

    settings = settings_from(GroupsSettings, args, "relscope groups")
    reports = groups_job(settings, args.out)
    for folder, report in reports:
        print(f"{folder}: {report.queries} queries, {report.groups} groups, {report.hard_negatives} hard + "
              f"{report.random_negatives} random negatives; {report.skipped_missing_text} judged pairs skipped "
              f"(no text); {report.queries_without_positive} queries without a positive")
    print(f"{sum(r.groups for _, r in reports)} groups -> {args.out}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    _add_rerank(commands.add_parser("rerank", help="rerank a first-stage run with an LLM and evaluate it"))
    _add_evaluate(commands.add_parser("evaluate", help="evaluate a TREC run with ir_measures"))
    _add_groups(commands.add_parser("groups", help="build training groups (Tevatron jsonl) from judgments"))
    _add_fuse(commands.add_parser("fuse", help="interpolate runs (a reranker with its first stage) and evaluate"))
