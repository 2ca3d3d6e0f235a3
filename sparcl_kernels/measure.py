"""Measuring without fooling oneself: interleaved wall-clock medians and resident memory.

Generic helpers shared by the kernel benchmarks, the Triton tuner and the CL layer's speed
check; they know nothing of sparse layers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    repeats: int = 15,
    warmup: int = 3,
    before: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Median seconds of each callable, timed in round-robin so that drift hits all equally.

    ``before``, when given, runs (untimed) before every timed call: e.g. an eviction of the
    caches, so that each callable starts from the same cache state instead of inheriting the
    operands its predecessor in the round left cached.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if before is not None:
                before()
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def fma_peak(threads: int | None = None, seconds: float = 0.3) -> dict:
    """This machine's fp32 multiply-add peak for the CPU kernels' instruction set in use.

    Returns ``{"isa", "threads", "gflops", "cpu"}`` (``cpu``: the model name the OS reports),
    so that kernel tables can state GFLOP/s on stored blocks as a fraction of the physical
    limit, measured on the same machine in the same run. Needs the CPU extension.
    """
    from sparcl_kernels.backends import get_backend  # measure itself stays kernel-agnostic

    cpu = get_backend("cpu")
    threads = threads or cpu.describe()["threads"]
    return {
        "isa": cpu.describe()["isa"],
        "threads": threads,
        "gflops": cpu.fma_peak(threads, seconds),
        "cpu": cpu_model(),
    }


def cpu_model() -> str:
    """The processor's model name (``lscpu``'s "Model name"), or the platform's description."""
    import platform

    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("model name", "Model name")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def current_rss_mb() -> float | None:
    """Resident memory of this process now (MB; Linux, None elsewhere)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (MB; Linux, None elsewhere).

    VmHWM belongs to this process's address space; ``ru_maxrss`` would carry the parent's
    peak over fork + exec on Linux, so children started to measure memory read this instead.
    """
    return _status_mb("VmHWM")
