"""Timing helpers shared by the benchmark scripts: medians of repeated runs, side by side."""

from __future__ import annotations

from collections.abc import Callable

from sparcl_kernels.measure import (
    current_rss_mb,
    interleaved_medians,
    peak_rss_mb,
)

__all__ = [
    "current_rss_mb",
    "emit",
    "interleaved_medians",
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


def emit(text: str, markdown: str | None) -> None:
    """Print a benchmark's tables, and write them to ``markdown`` when a path is given."""
    print(text)
    if markdown:
        with open(markdown, "w") as handle:
            handle.write(text + "\n")
