"""Command-line startup: how long `relscope --help` and `relscope <command> --help` take, beside the interpreter
alone (`python -c pass`) and beside importing torch (what every --help paid before the CLI stopped importing it).

Each figure is the median wall time of --repeats fresh processes, measured in the same run.

    python bench/startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
    "relscope --help": ["-m", "relscope", "--help"],
    "relscope rerank --help": ["-m", "relscope", "rerank", "--help"],
    "relscope patch --help": ["-m", "relscope", "patch", "--help"],
    "relscope evaluate (argument error)": ["-m", "relscope", "evaluate", "--qrels", "q", "--run", "r", "--measures",
                                           "nDCG@0"],
}


def median_seconds(argv: list[str], repeats: int) -> float:
    """Median wall time of `python argv` in fresh processes (stdout and stderr discarded)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"median of {args.repeats} fresh processes")
    base = None
    for name, argv in CASES.items():
        seconds = median_seconds(argv, args.repeats)
        base = base or seconds
        print(f"{name:<40} {seconds:6.3f} s   ({seconds - base:+.3f} s over python -c pass)")


if __name__ == "__main__":
    main()
