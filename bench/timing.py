"""Timing helpers shared by the benchmark scripts: medians of repeated runs, side by side."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 3
) -> dict[str, float]:
    """Median seconds of each callable, timed in round-robin so that drift hits all equally."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def emit(text: str, markdown: str | None) -> None:
    """Print a benchmark's tables, and write them to ``markdown`` when a path is given."""
    print(text)
    if markdown:
        with open(markdown, "w") as handle:
            handle.write(text + "\n")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB), from /proc/self/status.

    VmHWM belongs to this process's address space; ``ru_maxrss`` would carry the parent's
    peak over fork + exec on Linux, so children started to measure memory read this instead.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")
