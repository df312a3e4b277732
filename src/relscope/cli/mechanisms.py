"""Commands that open the model up by patching: patch, heads, knockout, compare."""

from __future__ import annotations

import argparse

from relscope.analysis.patching.settings import HeadsSettings, KnockoutSettings, PatchSettings
from relscope.analysis.settings import CompareSettings
from relscope.cli.flags import add_output, add_settings, settings_from


def _add_patch(p: argparse.ArgumentParser) -> None:
    add_settings(p, PatchSettings)
    add_output(p)
    p.set_defaults(handler=_patch)


def _patch(args: argparse.Namespace) -> int:
    settings = settings_from(PatchSettings, args, "relscope patch")  # checked before torch is imported
    from relscope.analysis.patching.job import patch_job
    from relscope.processes import main_process_lock, process_state

    with main_process_lock(args.out):  # under accelerate launch only the main process writes
        summary = patch_job(settings, args.out, progress=not args.quiet)
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
    add_settings(p, HeadsSettings)
    add_output(p)
    p.set_defaults(handler=_heads)


def _heads(args: argparse.Namespace) -> int:
    settings = settings_from(HeadsSettings, args, "relscope heads")  # checked before torch is imported
    from relscope.analysis.heads import DIRECT, heads_job
    from relscope.processes import main_process_lock, process_state
    from relscope.reports.tables import to_markdown

    with main_process_lock(args.out):
        rows = heads_job(settings, args.out, progress=not args.quiet)
    if process_state().is_main_process:
        print(to_markdown(sorted(rows, key=lambda r: -abs(r[DIRECT]))[:10]), end="")
        print(f"outputs: {args.out}/ (heads.csv, top_heads.md, interaction.png, direct.png)")
    return 0


def _add_knockout(p: argparse.ArgumentParser) -> None:
    add_settings(p, KnockoutSettings)
    add_output(p, quiet=False)
    p.set_defaults(handler=_knockout)


def _knockout(args: argparse.Namespace) -> int:
    settings = settings_from(KnockoutSettings, args, "relscope knockout")  # checked before torch is imported
    from relscope.analysis.knockout import knockout_job
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    with output_lock(args.out):
        rows = knockout_job(settings, args.out)
    print(to_markdown(rows), end="")
    print(f"outputs: {args.out}/ (knockout.md, knockout.png)")
    return 0


def _add_compare(p: argparse.ArgumentParser) -> None:
    add_settings(p, CompareSettings)
    add_output(p, quiet=False)
    p.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    from relscope.analysis.compare import compare_job
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    settings = settings_from(CompareSettings, args, "relscope compare")
    with output_lock(args.out):
        summary = compare_job(settings, args.out)
    print(to_markdown([summary]), end="")
    print(f"outputs: {args.out}/ (summary.md, top.md)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add patch, heads, knockout and compare to the `relscope` subcommands."""
    _add_patch(commands.add_parser("patch", help="activation patching: IE per layer x component x position group"))
    _add_heads(commands.add_parser("heads", help="per head: attention interaction score, logit lens, direct effect"))
    _add_knockout(commands.add_parser("knockout", help="mean-ablate head sets; judgment F1 and nDCG@10 drops"))
    _add_compare(commands.add_parser("compare", help="do two patch runs rely on the same components? RBO, Spearman"))
