"""A process's resident memory, now and at its peak, for the training log and summary (psutil would be one more
dependency for two numbers the kernel reports directly)."""

from __future__ import annotations

import os
import resource
import sys

GIB = 2**30


def resident_gib() -> float | None:
    """This process's resident set size now, in GiB (None where /proc is missing: not Linux)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / GIB


def peak_resident_gib(resident_now: float | None = None) -> float:
    """The most resident memory this process has held so far, in GiB (ru_maxrss: KiB on Linux, bytes on macOS).
    Linux updates ru_maxrss lazily, so it can trail the resident size now: the larger of the two. Pass the reading
    already made so that the peak is never below it (memory may be returned between two reads)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    now = resident_now if resident_now is not None else resident_gib()
    return max(peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB, now or 0.0)
