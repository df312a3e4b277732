"""Commands over the model's states: probe, attention."""

from __future__ import annotations

import argparse

from relscope.analysis.settings import AttentionSettings, ProbeSettings
from relscope.cli.commands import Command, add_command, locked, print_table


def _probe(settings: ProbeSettings, args: argparse.Namespace) -> int:
    from relscope.analysis.probe import probe_job

    print_table(locked(probe_job, settings, args.out), args.out)
    return 0


def _attention(settings: AttentionSettings, args: argparse.Namespace) -> int:
    from relscope.analysis.attention import attention_job

    print_table(locked(attention_job, settings, args.out), args.out)
    return 0


COMMANDS = (
    Command("probe", "linear probes and PCA on each layer's last-token state", ProbeSettings, _probe),
    Command("attention", "attention mass from document to query tokens", AttentionSettings, _attention),
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add probe and attention to the `relscope` subcommands."""
    for command in COMMANDS:
        add_command(commands, command)
