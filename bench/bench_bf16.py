"""bf16 linear benchmark (issue 27): the block-sparse linear under CPU bf16 autocast against
the same layer in fp32 and against dense torch in both precisions, timed interleaved in one
process (medians), with each bf16 pass's GFLOP/s on stored blocks as a fraction of the
measured bf16 dot-product peak.

    python bench/bench_bf16.py                                   # needs AVX512_BF16 / FEAT_BF16
    python bench/bench_bf16.py --kernels emulated --shapes 1024x1024 --batches 256

Without the instruction the script stops, unless ``--kernels emulated``: the emulation's rows
(fractions of the fp32 FMA peak, which bounds it) only show what the fallback costs.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys

import torch
from timing import (
    bf16_peak,
    cache_evictor,
    efficiency,
    emit,
    interleaved_medians,
    machine_line,
    sampled_peak,
)
from tqdm import tqdm

import sparcl_kernels as sk
from sparcl_kernels.backends import get_backend

PASSES = ("forward", "input grad", "weight grad")


def measure(in_f, out_f, batch, block, sparsity, repeats) -> dict[str, float]:
    """Milliseconds of every contender for one configuration."""
    generator = torch.Generator().manual_seed(0)
    dense = torch.nn.Linear(in_f, out_f)
    layout = sk.BlockLayout.from_dense(dense.weight, block, sparsity)
    values = torch.nn.Parameter(layout.to_blocks(dense.weight.detach()))
    bias = torch.nn.Parameter(dense.bias.detach().clone())
    x = torch.randn(batch, in_f, generator=generator).requires_grad_()
    grad_out = torch.randn(batch, out_f, generator=generator)
    x16, grad16 = x.detach().bfloat16(), grad_out.bfloat16()
    cpu = get_backend("cpu")

    def step(model_call, precision):
        def run():
            x.grad = None
            for p in (values, bias, dense.weight, dense.bias):
                p.grad = None
            if precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = model_call()
                y.backward(grad16)
            else:
                model_call().backward(grad_out)

        return run

    def sparse():
        return sk.block_sparse_linear(x, values, layout, bias, backend="cpu")

    # Detached once (a layer's parameter stays one tensor): the backend packs the bf16
    # blocks once per values tensor, and a fresh detach() per call would time the packing.
    weights, bias_values = values.detach(), bias.detach()
    fns = {
        "dense fp32": step(lambda: dense(x), "fp32"),
        "dense bf16": step(lambda: dense(x), "bf16"),
        "ours fp32": step(sparse, "fp32"),
        "ours bf16": step(sparse, "bf16"),
        "forward": lambda: cpu.forward(x16, weights, layout, bias_values),
        "input grad": lambda: cpu.grad_input(grad16, weights, layout),
        "weight grad": lambda: cpu.grad_weight(grad16, x16, layout, None),
    }
    times = interleaved_medians(fns, repeats=repeats, warmup=2, before=cache_evictor())
    result = {name: seconds * 1e3 for name, seconds in times.items()}
    result["stored_flops"] = 2.0 * batch * layout.nnz * block * block
    return result


def table(rows: list[tuple[tuple, dict]], peak: float, peak_name: str) -> str:
    lines = [
        "| in x out | N | block | sparsity | dense fp32 ms | dense bf16 ms | ours fp32 ms "
        "| ours bf16 ms | ours bf16 vs fp32 | vs dense: fp32 | vs dense: bf16 "
        + "".join(f"| {p} GFLOP/s (of {peak_name}) " for p in PASSES)
        + "|",
        "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(PASSES),
    ]
    for (in_f, out_f, batch, block, sparsity), r in rows:
        passes = "".join(f"| {efficiency(r['stored_flops'], r[p] / 1e3, peak)} " for p in PASSES)
        lines.append(
            f"| {in_f}x{out_f} | {batch} | {block} | {sparsity:g} | {r['dense fp32']:.3f} "
            f"| {r['dense bf16']:.3f} | {r['ours fp32']:.3f} | {r['ours bf16']:.3f} "
            f"| {r['ours fp32'] / r['ours bf16']:.2f}x | {r['dense fp32'] / r['ours fp32']:.2f}x "
            f"| {r['dense bf16'] / r['ours bf16']:.2f}x {passes}|"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["2048x2048", "768x3072"])
    parser.add_argument("--batches", nargs="+", type=int, default=[256, 2048])
    parser.add_argument("--blocks", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--kernels", choices=("native", "emulated"), default="native")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = get_backend("cpu")
    try:
        cpu.select_bf16_kernels(args.kernels, source="--kernels")
    except ValueError as error:
        sys.exit(f"bench_bf16.py: {error}; --kernels emulated times the fallback instead")
    fp32_peak = sampled_peak(lambda: cpu.fma_peak(args.threads))
    dot_peak = bf16_peak(args.threads)
    if args.kernels == "native":
        peak, peak_name = dot_peak, "bf16 dot peak"
    else:
        peak, peak_name = fp32_peak, f"{cpu.describe()['isa']} FMA peak"
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    grid = list(itertools.product(shapes, args.batches, args.blocks, args.sparsities))
    rows = [
        (
            (in_f, out_f, batch, block, sparsity),
            measure(in_f, out_f, batch, block, sparsity, args.repeats),
        )
        for (in_f, out_f), batch, block, sparsity in tqdm(grid, desc="configurations")
    ]
    info = cpu.describe()
    header = (
        f"{datetime.date.today()} · torch {torch.__version__} · {args.threads} threads · "
        f"bf16 kernels: {info['bf16_kernels']} · fp32 kernels: {info['isa']} · "
        f"medians of {args.repeats} interleaved repeats"
    )
    line = machine_line({info["isa"]: fp32_peak}, args.threads, dot_peak)
    text = f"{header}\n{line}\n\n" + table(rows, peak, peak_name)
    emit(text, args.markdown)


if __name__ == "__main__":
    main()
