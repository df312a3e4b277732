"""A `relscope` command whose options are one settings dataclass: its flags (from the dataclass), its settings
checked before its job is imported (jobs import torch), and the table most commands print.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from relscope.cli.flags import add_output, add_settings, settings_from


@dataclass(frozen=True)
class Command:
    """One command: its name and help, its settings dataclass and what runs it: `run(settings, args) -> status`."""

    name: str
    help: str
    settings: type
    run: Callable[[Any, argparse.Namespace], int]
    out: str | None = "output folder"  # the --out help; None: the command writes nothing
    quiet: bool = False  # offers --quiet (no progress bars)
    config_file: bool = False  # offers --config, a YAML file of the settings' keys that the flags override


def add_command(commands: argparse._SubParsersAction, command: Command) -> argparse.ArgumentParser:
    """The command's parser among `commands`, its flags derived from its settings dataclass."""
    parser = commands.add_parser(command.name, help=command.help)
    if command.config_file:
        parser.add_argument("--config", help=f"YAML file of {command.settings.__name__} keys; flags given here "
                                             "override it")
    add_settings(parser, command.settings)
    if command.out is not None:
        add_output(parser, quiet=command.quiet, what=command.out)
    parser.set_defaults(handler=partial(_handle, command, parser.prog))
    return parser


def _handle(command: Command, prog: str, args: argparse.Namespace) -> int:
    """Build and check the settings (cheap, no torch), then run the command."""
    from relscope.config import load_yaml

    base = load_yaml(args.config) if command.config_file and args.config else None
    settings = settings_from(command.settings, args, args.config if base is not None else prog, base=base)
    return command.run(settings, args)


def print_table(rows: Sequence[Mapping[str, Any]], out: str, outputs: str = "", bold_best: str | None = None) -> None:
    """A job's result table in Markdown, then where its files are."""
    from relscope.reports.tables import to_markdown

    print(to_markdown(list(rows), bold_best=bold_best if rows and bold_best in rows[0] else None), end="")
    print(f"outputs: {out}/" + (f" ({outputs})" if outputs else ""))


def locked(job: Callable[[Any, str], Any], settings: Any, out: str, **options: Any) -> Any:
    """`job(settings, out)` holding the output folder's lock: two jobs on one folder would mix their outputs."""
    from relscope.io import output_lock

    with output_lock(out):
        return job(settings, out, **options)
