"""GPU kernel benchmark: cuBLAS dense vs block-sparse ours (the Triton or the CUDA backend)
vs torch's Triton BSR forward, with the same tables as bench_cpu.py (all three passes and
the masked weight gradient). Needs a CUDA device; no GPU numbers are recorded in
bench/RESULTS.md until this has run on one.

    python bench/bench_gpu.py --dtype bfloat16 --backend triton --markdown /tmp/gpu.md
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys
import warnings

import torch
from bench_cpu import PASSES, Row, parse_shape, tables
from timing import emit, interleaved_medians
from tqdm import tqdm

import sparcl_kernels as sk
from sparcl_kernels.backends import get_backend


def synchronized(fn):
    def run():
        fn()
        torch.cuda.synchronize()

    return run


def measure(in_f, out_f, batch, block, sparsity, repeats, dtype, backend="triton") -> Row:
    generator = torch.Generator().manual_seed(0)
    dense = torch.nn.Linear(in_f, out_f).cuda().to(dtype)
    layout = sk.BlockLayout.from_dense(dense.weight.float().cpu(), block, sparsity).to("cuda")
    weight = layout.to_dense(layout.to_blocks(dense.weight.detach()))
    values = torch.nn.Parameter(layout.to_blocks(weight))
    bias = torch.nn.Parameter(dense.bias.detach().clone())
    x = torch.randn(batch, in_f, generator=generator).cuda().to(dtype)
    grad_out = torch.randn(batch, out_f, generator=generator).cuda().to(dtype)
    grad_mask = (torch.rand(layout.nnz, generator=generator) < 0.2).cuda()
    ours = get_backend(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that sparse BSR support is in beta
        bsr = weight.to_sparse_bsr((block, block))

    def dense_step():
        dense.zero_grad(set_to_none=True)
        dense(x).backward(grad_out)

    def ours_step():
        values.grad = bias.grad = None
        sk.block_sparse_linear(x, values, layout, bias, backend=backend).backward(grad_out)

    fns = {
        "dense forward": lambda: torch.nn.functional.linear(x, weight, bias),
        "dense input grad": lambda: grad_out @ weight,
        "dense weight grad": lambda: grad_out.t() @ x,
        "dense all three": dense_step,
        "ours forward": lambda: ours.forward(x, values.detach(), layout, bias.detach()),
        "ours input grad": lambda: ours.grad_input(grad_out, values.detach(), layout),
        "ours weight grad": lambda: ours.grad_weight(grad_out, x, layout, None),
        "ours all three": ours_step,
        "ours masked": lambda: ours.grad_weight(grad_out, x, layout, grad_mask),
    }
    if layout.nnz:
        fns["bsr forward"] = lambda: torch.nn.functional.linear(x, bsr, bias)
    times = interleaved_medians(
        {name: synchronized(fn) for name, fn in fns.items()}, repeats=repeats, warmup=3
    )
    return Row(
        in_f,
        out_f,
        batch,
        block,
        sparsity,
        {p: times[f"dense {p}"] * 1e3 for p in PASSES},
        {p: times[f"ours {p}"] * 1e3 for p in PASSES},
        times["bsr forward"] * 1e3 if "bsr forward" in times else None,
        times["ours masked"] * 1e3,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["4096x4096", "4096x16384"])
    parser.add_argument("--batches", nargs="+", type=int, default=[2048, 8192])
    parser.add_argument("--blocks", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9, 0.95])
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--backend", choices=["triton", "cuda"], default="triton")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device (torch.cuda.is_available() is False)")
    dtype = getattr(torch, args.dtype)
    shapes = [parse_shape(s) for s in args.shapes]
    grid = list(itertools.product(shapes, args.batches, args.blocks, args.sparsities))
    rows = [
        measure(in_f, out_f, batch, block, sparsity, args.repeats, dtype, args.backend)
        for (in_f, out_f), batch, block, sparsity in tqdm(grid, desc="configurations")
    ]
    header = (
        f"{datetime.date.today()} · torch {torch.__version__} · {torch.cuda.get_device_name()} · "
        f"ours: {args.backend} backend {sk.backend_info()['backends'][args.backend]} · "
        f"{args.dtype} · "
        f"TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} · medians of "
        f"{args.repeats} interleaved repeats"
    )
    emit(header + "\n" + tables(rows), args.markdown)


if __name__ == "__main__":
    main()
