"""Commands that open the model up by patching: patch, heads, knockout, compare."""

from __future__ import annotations

import argparse

from relscope.analysis.patching.settings import CircuitSettings, HeadsSettings, KnockoutSettings, PatchSettings
from relscope.analysis.settings import CompareSettings
from relscope.cli.commands import Command, add_command, locked, print_table


def _patch(settings: PatchSettings, args: argparse.Namespace) -> int:
    from relscope.analysis.patching.job import patch_job
    from relscope.processes import main_process_lock, process_state

    with main_process_lock(args.out):  # under accelerate launch only the main process writes
        summary = patch_job(settings, args.out, progress=not args.quiet)
    if not process_state().is_main_process:
        return 0
    print(f"{summary['pairs']} pairs ({len(summary['excluded_small_gap'])} excluded for a gap below "
          f"{summary['min_gap']}, {summary['skipped_misaligned']} misaligned skipped), {summary['sites']} sites, "
          f"{summary['processes']} process(es)")
    if summary["method"] != "exact":
        print(f"indirect effects estimated by {summary['method']}, not patched exactly (--validate measures how well "
              "they agree)")
    for row in summary.get("validation", []):
        print(f"{settings.attribution} vs exact, {row['site type']} ({row['sites']} sites): Pearson r "
              f"{row['pearson']:.3f}, Spearman {row['spearman']:.3f}, of the means {row['pearson of means']:.3f}, "
              f"top-20 recall {row['top-20 recall']:.2f}; {row['passes per pair']} passes a pair vs "
              f"{row['exact passes per pair']}")
    print(f"outputs: {args.out}/ (ie.npz, ie_mean.csv, top_sites.md, ie_<component>.png"
          f"{', validation.md, validation_' + settings.attribution + '.png' if settings.validate else ''})")
    return 0


def _circuit(settings: CircuitSettings, args: argparse.Namespace) -> int:
    from relscope.analysis.patching.circuit import circuit_job

    summary = locked(circuit_job, settings, args.out, progress=not args.quiet)
    print(f"{summary['pairs kept']} of {summary['pairs']} pairs, {summary['edges']} edges "
          f"({summary['writers']} writers, {summary['readers']} readers); {summary['ablation']} ablation")
    for row in summary["curve"]:
        print(f"top {row['edges']:>6} edges ({100 * row['share of edges']:6.2f} %): {row['recovered']:+.3f} of LD "
              "recovered")
    found = summary["circuit_edges"]
    if any(row["recovered"] != row["recovered"] for row in summary["curve"]):  # NaN
        print(f"the whole model's logit difference ({summary['ld_all']:.4g}) is within --min-gap of the ablated "
              f"one's ({summary['ld_none']:.4g}): nothing to recover; use other pairs or --ablation")
    band = f"{summary['target']:.0%}-{2 - summary['target']:.0%}"
    print(f"circuit: {found} edges recover {band} of the logit difference" if found else
          f"no top-edge circuit short of the whole model recovers {band} of the logit difference")
    print(f"outputs: {args.out}/ (edges.csv, faithfulness.md, circuit.md, faithfulness.png, circuit.png)")
    return 0


def _heads(settings: HeadsSettings, args: argparse.Namespace) -> int:
    from relscope.analysis.heads import DIRECT, heads_job
    from relscope.processes import main_process_lock, process_state

    with main_process_lock(args.out):
        rows = heads_job(settings, args.out, progress=not args.quiet)
    if process_state().is_main_process:
        print_table(sorted(rows, key=lambda r: -abs(r[DIRECT]))[:10], args.out,
                    "heads.csv, top_heads.md, interaction.png, direct.png")
    return 0


def _knockout(settings: KnockoutSettings, args: argparse.Namespace) -> int:
    from relscope.analysis.knockout import knockout_job

    print_table(locked(knockout_job, settings, args.out), args.out, "knockout.md, knockout.png")
    return 0


def _compare(settings: CompareSettings, args: argparse.Namespace) -> int:
    from relscope.analysis.compare import compare_job

    print_table([locked(compare_job, settings, args.out)], args.out, "summary.md, top.md")
    return 0


COMMANDS = (
    Command("patch", "activation patching: IE per layer x component x position group", PatchSettings, _patch,
            quiet=True),
    Command("heads", "per head: attention interaction score, logit lens, direct effect", HeadsSettings, _heads,
            quiet=True),
    Command("knockout", "mean-ablate head sets; judgment F1 and nDCG@10 drops", KnockoutSettings, _knockout),
    Command("circuit", "edge attribution (EAP-IG); circuits and their faithfulness by exact ablation",
            CircuitSettings, _circuit, quiet=True),
    Command("compare", "do two patch runs rely on the same components? RBO, Spearman", CompareSettings, _compare),
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add patch, heads, knockout and compare to the `relscope` subcommands."""
    for command in COMMANDS:
        add_command(commands, command)
