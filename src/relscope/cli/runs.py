"""Commands over runs: rerank, evaluate, fuse, groups, export. Their flags come from the settings dataclasses."""

from __future__ import annotations

import argparse

from relscope.cli.commands import Command, add_command
from relscope.data.training import GroupsSettings
from relscope.evaluation.settings import EvaluateSettings, ExportSettings, FuseSettings, RerankConfig


def _rerank(config: RerankConfig, args: argparse.Namespace) -> int:
    from relscope.evaluation.job import run_rerank_job

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
        gains = metrics.get("reranked_minus_first_stage", {})
        print(f"{'measure':<{width}}{'first stage':>12}{'reranked':>12}  difference [95% paired bootstrap], "
              "queries better/worse")
        for name, value in metrics["reranked"].items():
            gain = gains.get(name)
            shown = (f"  {gain['difference']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}], "
                     f"{gain['better']}/{gain['worse']}") if gain else ""
            print(f"{name:<{width}}{metrics['first_stage'][name]:>12.4f}{value:>12.4f}{shown}")




def _evaluate(settings: EvaluateSettings, args: argparse.Namespace) -> int:
    from relscope.evaluation.metrics import evaluate_job

    mean, per_query = evaluate_job(settings)
    if settings.per_query:
        for qid in sorted(per_query):
            print("\t".join([qid] + [f"{per_query[qid][m]:.4f}" for m in settings.measures]))
    for name, value in mean.items():
        print(f"{name}\tall\t{value:.4f}")
    return 0


def _fuse(settings: FuseSettings, args: argparse.Namespace) -> int:
    from relscope.evaluation.fusion import fuse_job

    rows = fuse_job(settings, args.out)
    if rows:
        print("\n".join(["\t".join(["run", *settings.measures]),
                         *("\t".join([row["run"]] + [f"{row[m]:.4f}" for m in settings.measures]) for row in rows)]))
    print(f"fused run: {args.out}")
    return 0


def _groups(settings: GroupsSettings, args: argparse.Namespace) -> int:
    from relscope.data.training import groups_job

    reports = groups_job(settings, args.out)
    for folder, report in reports:
        print(f"{folder}: {report.queries} queries, {report.groups} groups, {report.hard_negatives} hard + "
              f"{report.random_negatives} random negatives; {report.skipped_missing_text} judged pairs skipped "
              f"(no text); {report.queries_without_positive} queries without a positive")
    print(f"{sum(r.groups for _, r in reports)} groups -> {args.out}")
    return 0


def _export(settings: ExportSettings, args: argparse.Namespace) -> int:
    from relscope.evaluation.export import export_job

    info = export_job(settings, args.out)
    loads = "transformers" + (" and sentence-transformers' CrossEncoder" if info["cross_encoder"] else "")
    bias = f"; add score_bias {info['score_bias']:+.6f} for relscope's scores" if info["score_bias"] else ""
    print(f"{args.out}: {info['kind']} ({info['head']} head), loads with {loads}{bias}; prompt and answer tokens in "
          f"{args.out}/relscope_export.json")
    return 0


COMMANDS = (
    Command("rerank", "rerank a first-stage run with an LLM and evaluate it", RerankConfig, _rerank, quiet=True,
            config_file=True),
    Command("evaluate", "evaluate a TREC run with ir_measures", EvaluateSettings, _evaluate, out=None),
    Command("groups", "build training groups (Tevatron jsonl) from judgments", GroupsSettings, _groups,
            out="output .jsonl (its manifest goes beside it: <out>.manifest.json)"),
    Command("fuse", "interpolate runs (a reranker with its first stage) and evaluate", FuseSettings, _fuse,
            out="the fused TREC run (its manifest goes beside it: <out>.manifest.json)"),
    Command("export", "a trained checkpoint as a merged Hugging Face model folder (and CrossEncoder) to serve",
            ExportSettings, _export, out="the new folder to write"),
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add rerank, evaluate, groups, fuse and export to the `relscope` subcommands."""
    for command in COMMANDS:
        add_command(commands, command)
