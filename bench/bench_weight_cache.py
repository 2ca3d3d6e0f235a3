"""What the CPU backend's cached transposed blocks save: forwards and training steps with the
cache against the same calls transposing the blocks per call, timed interleaved in one run.

    python bench/bench_weight_cache.py --repeats 9
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from unittest import mock

import torch
from bench_resnet import CifarResNet18, sgd_step, swap_block_convs
from timing import emit, interleaved_medians, isa_peaks, machine_line

import sparcl_kernels as sk
from sparcl_kernels.backends import cpu


def per_call(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` with the cache switched off: every forward transposes its blocks (the old path)."""

    def run() -> None:
        with mock.patch.object(cpu, "transposed_blocks", lambda values: None):
            fn()

    return run


def linear_forward(batch: int, block: int, sparsity: float) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(2048, 2048, generator=generator)
    layout = sk.BlockLayout.from_dense(weight, block, sparsity)
    values = layout.to_blocks(weight).contiguous()
    x = torch.randn(batch, 2048, generator=generator)
    return lambda: cpu.forward(x, values, layout, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--markdown")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    cases: dict[str, Callable[[], None]] = {}
    for batch in (256, 2048):
        for block in (32, 16, 8):
            cases[f"linear 2048x2048 forward, N={batch}, {block}x{block}, 0.9"] = linear_forward(
                batch, block, 0.9
            )
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for block in (32, 16, 8):
        model = swap_block_convs(CifarResNet18(), 0.9, block).to(memory_format=torch.channels_last)
        cases[f"ResNet-18 SGD step (16 block convs {block}x{block}, 0.9)"] = sgd_step(
            model, x, y, "fp32"
        )
    fns = {}
    for name, fn in cases.items():
        fns[f"{name}|cached"] = fn
        fns[f"{name}|per call"] = per_call(fn)
    times = interleaved_medians(fns, repeats=args.repeats, warmup=2)
    peaks = isa_peaks([cpu.describe()["isa"]], threads)
    lines = [
        f"{datetime.date.today()} · {machine_line(peaks, threads)} · torch {torch.__version__} "
        f"· medians of {args.repeats}, interleaved\n",
        "| case | transposed per call ms | cached ms | per call / cached |",
        "|---|---|---|---|",
    ]
    for name in cases:
        old, new = times[f"{name}|per call"] * 1e3, times[f"{name}|cached"] * 1e3
        lines.append(f"| {name} | {old:.3f} | {new:.3f} | {old / new:.3f}x |")
    emit("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
