"""Commands over the model's states: probe, attention."""

from __future__ import annotations

import argparse

from relscope.analysis.settings import AttentionSettings, ProbeSettings
from relscope.cli.flags import add_output, add_settings, settings_from


def _add_probe(p: argparse.ArgumentParser) -> None:
    add_settings(p, ProbeSettings)
    add_output(p, quiet=False)
    p.set_defaults(handler=_probe)


def _probe(args: argparse.Namespace) -> int:
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    settings = settings_from(ProbeSettings, args, "relscope probe")
    from relscope.analysis.probe import probe_job

    with output_lock(args.out):
        rows = probe_job(settings, args.out)
    print(to_markdown(rows), end="")
    print(f"outputs: {args.out}/")
    return 0


def _add_attention(p: argparse.ArgumentParser) -> None:
    add_settings(p, AttentionSettings)
    add_output(p, quiet=False)
    p.set_defaults(handler=_attention)


def _attention(args: argparse.Namespace) -> int:
    from relscope.io import output_lock
    from relscope.reports.tables import to_markdown

    settings = settings_from(AttentionSettings, args, "relscope attention")
    from relscope.analysis.attention import attention_job

    with output_lock(args.out):
        rows = attention_job(settings, args.out)
    print(to_markdown(rows), end="")
    print(f"outputs: {args.out}/")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    _add_probe(commands.add_parser("probe", help="linear probes and PCA on each layer's last-token state"))
    _add_attention(commands.add_parser("attention", help="attention mass from document to query tokens"))
