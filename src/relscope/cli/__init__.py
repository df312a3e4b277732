"""The relscope command line: thin parsing over the Python API, imports deferred to the command.

Errors a user can cause print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from relscope.cli import mechanisms, representations, runs, study, training
from relscope.errors import RelscopeError


def main(argv: Sequence[str] | None = None) -> int:
    """Run one relscope command; its exit status (2 with a one-line message for an error a user can fix)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # PEFT 0.21 reads a property transformers 5 deprecated; the warning says nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    try:
        return args.handler(args)
    except RelscopeError as err:
        print(f"relscope: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # the environment's refusal (permissions, a full disk): the file and the reason
        where = f"{err.filename}: " if err.filename else ""
        print(f"relscope: error: {where}{err.strerror or err}; check the path, its permissions and free space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relscope: interrupted", file=sys.stderr)
        return 130


def one_line(text: str) -> str:
    """An error message on one line, whatever it quotes."""
    return " ".join(text.split())


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors in one line (usage is one `--help` away) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Exit 2 with the message on one line and a pointer to --help."""
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `relscope` parser with every subcommand (their imports deferred to the handlers)."""
    parser = OneLineParser(prog="relscope", description="How does relevance emerge inside an LLM reranker?")
    commands = parser.add_subparsers(dest="command", required=True)
    study.register(commands)
    runs.register(commands)
    training.register(commands)
    mechanisms.register(commands)
    training.register_freeze(commands)
    representations.register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
