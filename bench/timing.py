"""Timing helpers shared by the benchmark scripts: medians of repeated runs, side by side."""

from __future__ import annotations

import time
from collections.abc import Callable

from sparcl_kernels.measure import (
    current_rss_mb,
    interleaved_medians,
    peak_rss_mb,
)

__all__ = [
    "bf16_peak",
    "breakdown_table",
    "cache_evictor",
    "efficiency",
    "isa_peaks",
    "machine_line",
    "current_rss_mb",
    "emit",
    "interleaved_medians",
    "on_isa",
    "peak_rss_mb",
    "profiled_ops",
    "sampled_peak",
    "supported_isas",
]


def supported_isas() -> list[str]:
    """The CPU kernels' instruction sets this machine runs, narrowest first."""
    from sparcl_kernels.backends import cpu

    return cpu.describe()["supported_isas"]


def sampled_peak(probe: Callable[[], float], samples: int = 5, gap: float = 0.4) -> float:
    """The best of ``samples`` readings of a peak probe taken ``gap`` seconds apart.

    On the shared hosts these tables come from, another tenant's work has halved the
    multiply-add rate for a second or more at a time (a table's probe at 232 GFLOP/s where
    the next read 465, its dense convolutions at 125 % of it); a probe spread over two
    seconds sees past such a dip where one reading cannot.
    """
    best = 0.0
    for sample in range(samples):
        if sample:
            time.sleep(gap)
        best = max(best, probe())
    return best


def isa_peaks(isas: list[str], threads: int) -> dict[str, float]:
    """The measured fp32 multiply-add peak (GFLOP/s, ``threads`` threads) of each instruction
    set, each at its native width (sampled_peak): what kernel efficiencies are fractions of."""
    from sparcl_kernels.backends import cpu

    in_use = cpu.describe()["isa"]
    peaks = {}
    for isa in isas:
        cpu.select_isa(isa)
        peaks[isa] = sampled_peak(lambda: cpu.fma_peak(threads))
    cpu.select_isa(in_use)  # SPARCL_CPU_ISA's choice stays in force
    return peaks


def bf16_peak(threads: int) -> float | None:
    """The measured peak (GFLOP/s, sampled_peak) of the CPU's bf16 dot-product instruction,
    or None where it has none."""
    from sparcl_kernels.backends import cpu

    if cpu.describe()["bf16_dot_instruction"] is None:
        return None
    return sampled_peak(lambda: cpu.bf16_dot_peak(threads))


def machine_line(peaks: dict[str, float], threads: int, bf16: float | None = None) -> str:
    """The table header naming the machine: CPU model, threads, each ISA's measured peak and,
    where the CPU has one, its bf16 dot-product instruction's measured peak (``bf16``, the
    one the table used, else measured here)."""
    from sparcl_kernels.backends import cpu
    from sparcl_kernels.measure import cpu_model

    measured = ", ".join(f"{isa} {gflops:.0f}" for isa, gflops in peaks.items())
    line = f"CPU: {cpu_model()} · {threads} threads · measured FMA peak GFLOP/s: {measured}"
    instruction = cpu.describe()["bf16_dot_instruction"]
    if instruction is None:
        return line + " · no bf16 dot-product instruction"
    bf16 = bf16 if bf16 is not None else bf16_peak(threads)
    return line + f" · {instruction} bf16 dot peak {bf16:.0f} GFLOP/s"


def efficiency(flops: float, seconds: float, peak_gflops: float) -> str:
    """``GFLOP/s (fraction of peak)`` for ``flops`` done in ``seconds``."""
    gflops = flops / seconds * 1e-9
    return f"{gflops:.0f} ({gflops / peak_gflops:.0%})"


def cache_evictor(mib: int = 64) -> Callable[[], object]:
    """A callable that rewrites ``mib`` MiB (twice the largest L3 of the machines here), for
    ``interleaved_medians(before=...)``: every timed call then finds its operands in memory,
    as after the other layers of a network, whichever call ran before it in the round."""
    import torch

    buffer = torch.zeros(mib * 2**20 // 4)
    return lambda: buffer.add_(1.0)


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


# Where a training step's time goes: self CPU time of the ops of each category. A sparse
# layer's autograd nodes (_EagerForward and its backward) include the C++ kernels they call.
STEP_CATEGORIES = {
    "sparse convs, forward": ("_EagerForward",),
    "sparse convs, backward": ("_EagerForwardBackward",),
    "dense convs": ("aten::mkldnn_convolution", "aten::convolution_backward"),
    "BatchNorm": ("aten::native_batch_norm", "aten::native_batch_norm_backward"),
    "ReLU": ("aten::clamp_min", "aten::clamp_min_", "aten::threshold_backward"),
    # In-place adds (aten::add_) are the optimizer's and gradient accumulation's too: a model
    # whose residual adds work in place (sparcl's ResNet-18) has them under everything else.
    "residual adds (out of place)": ("aten::add",),
    # Autocast's casts to bf16 and back, and memory-format conversions.
    "copies (dtype and format)": ("aten::copy_",),
}
REST = "everything else (optimizer, loss, autograd engine, Python)"


def profiled_ops(step: Callable[[], object], steps: int = 3) -> tuple[dict, int]:
    """torch.profiler's per-op averages over ``steps`` calls of ``step`` (after one warm-up)."""
    import torch

    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {event.key: event for event in prof.key_averages()}, steps


def _breakdown(events: dict, steps: int) -> dict[str, float]:
    total = sum(event.self_cpu_time_total for event in events.values())
    us = {
        category: sum(events[key].self_cpu_time_total for key in keys if key in events)
        for category, keys in STEP_CATEGORIES.items()
    }
    us[REST] = total - sum(us.values())
    us["the step (profiled)"] = total
    return {category: value / steps / 1e3 for category, value in us.items()}


def breakdown_table(profiles: dict[str, tuple[dict, int]]) -> list[str]:
    """Milliseconds per step by op category, one column per profiled variant."""
    columns = {name: _breakdown(*profile) for name, profile in profiles.items()}
    lines = [
        "| ms per step | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for category in next(iter(columns.values())):
        cells = " | ".join(f"{column[category]:.1f}" for column in columns.values())
        lines.append(f"| {category} | {cells} |")
    return lines
