"""Timing helpers shared by the benchmark scripts: medians of repeated runs, side by side."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from sparcl.speedup import interleaved_medians

__all__ = [
    "current_rss_mb",
    "emit",
    "interleaved_medians",
    "median_seconds",
    "on_isa",
    "peak_rss_mb",
    "supported_isas",
]


def supported_isas() -> list[str]:
    """The CPU kernels' instruction sets this machine runs, narrowest first."""
    from sparcl_kernels.backends import cpu

    return cpu.describe()["supported_isas"]


def on_isa(isa: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with the CPU kernels of instruction set ``isa``, so that several instruction
    sets can be timed interleaved in one run (switching costs about a microsecond)."""
    from sparcl_kernels.backends import cpu

    def run() -> object:
        cpu.select_isa(isa)
        return fn()

    return run


def median_seconds(fn: Callable[[], object], repeats: int = 15, warmup: int = 3) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def emit(text: str, markdown: str | None) -> None:
    """Print a benchmark's tables, and write them to ``markdown`` when a path is given."""
    print(text)
    if markdown:
        with open(markdown, "w") as handle:
            handle.write(text + "\n")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def current_rss_mb() -> float:
    """Resident memory of this process now (MB), from /proc/self/status."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB), from /proc/self/status.

    VmHWM belongs to this process's address space; ``ru_maxrss`` would carry the parent's
    peak over fork + exec on Linux, so children started to measure memory read this instead.
    """
    return _status_mb("VmHWM")
