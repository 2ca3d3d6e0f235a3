"""Fill the Triton backend's meta-parameter table for the GPU at hand.

For every pass, block size, dtype and batch bucket, times each candidate configuration
(medians of interleaved repeats; candidates that fail to compile, e.g. for lack of shared
memory, are skipped) and writes the fastest as JSON. Use it with
``export SPARCL_TRITON_TUNING=/path/table.json``. Needs a CUDA device.

    python bench/tune_triton.py --output triton_table.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
from timing import interleaved_medians
from tqdm import tqdm

from sparcl_kernels.backends import get_backend
from sparcl_kernels.backends.triton import tuning
from sparcl_kernels.layout import BlockLayout

# A representative batch (activation rows) for each bucket of tuning.BATCH_BUCKETS.
BUCKET_SAMPLES = {64: 64, 512: 512, tuning.BATCH_BUCKETS[-1]: 8192}


def candidates(kind: str, block_size: tuple[int, int], quick: bool = False) -> list[dict[str, int]]:
    bm, bk = block_size
    warps_stages = [(4, 3)] if quick else list(itertools.product((2, 4, 8), (2, 3, 4)))
    if kind == "grad_weight":
        return [
            {"TILE_M": tm, "TILE_K": tk, "BLOCK_N": bn, "num_warps": w, "num_stages": s}
            for tm, tk, bn, (w, s) in itertools.product(
                (32, 64, 128), (32, 64, 128), (32, 64, 128), warps_stages
            )
            if tm <= bm and tk <= bk and bm % tm == 0 and bk % tk == 0
        ]
    reduced = bk if kind == "forward" else bm
    return [
        {"BLOCK_N": bn, "CHUNK": c, "GROUP": g, "num_warps": w, "num_stages": s}
        for bn, c, g, (w, s) in itertools.product(
            (16, 32, 64, 128), (16, 32, 64, 128), (1, 8), warps_stages
        )
        if c <= reduced
    ]


def problem(block_size, dtype, n, features=4096, sparsity=0.9):
    generator = torch.Generator().manual_seed(0)
    grid = (features // block_size[0], features // block_size[1])
    layout = BlockLayout.from_block_mask(
        torch.rand(grid, generator=generator) > sparsity, block_size
    )
    layout = layout.to("cuda")
    values = torch.randn(layout.nnz, *block_size, device="cuda", dtype=dtype)
    x = torch.randn(n, features, device="cuda", dtype=dtype)
    grad_out = torch.randn(n, features, device="cuda", dtype=dtype)
    return layout, values, x, grad_out


def runner(kind, meta, layout, values, x, grad_out):
    backend = get_backend("triton")
    call = {
        "forward": lambda: backend.forward(x, values, layout, None, meta),
        "grad_input": lambda: backend.grad_input(grad_out, values, layout, meta),
        "grad_weight": lambda: backend.grad_weight(grad_out, x, layout, None, meta),
    }[kind]

    def run():
        call()
        torch.cuda.synchronize()

    return run


def tune_one(kind, block_size, dtype, n, repeats, quick=False) -> dict[str, int] | None:
    operands = problem(block_size, dtype, n)
    runnable = {}
    for index, meta in enumerate(candidates(kind, block_size, quick)):
        run = runner(kind, meta, *operands)
        try:
            run()  # compiles; a configuration the GPU cannot hold fails here
        except Exception as error:  # any compile or launch failure rules the candidate out
            print(f"  skip {meta}: {type(error).__name__}", file=sys.stderr)
            continue
        runnable[index] = (meta, run)
    if not runnable:
        return None
    times = interleaved_medians({i: r for i, (_, r) in runnable.items()}, repeats, warmup=1)
    return runnable[min(times, key=times.get)][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--blocks", nargs="+", type=int, default=[16, 32, 64, 128])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test of the tuner (make gpu-check): 32x32 bf16 blocks, the largest batch "
        "bucket, one warps/stages pair",
    )
    args = parser.parse_args()
    if args.quick:
        args.blocks, args.dtypes, args.repeats = [32], ["bfloat16"], 3
    if not torch.cuda.is_available():
        sys.exit("tune_triton.py needs a CUDA device (torch.cuda.is_available() is False)")
    table = json.loads(args.output.read_text()) if args.output.exists() else {}
    buckets = list(BUCKET_SAMPLES.items())[-1:] if args.quick else BUCKET_SAMPLES.items()
    jobs = list(itertools.product(tuning.PASSES, args.blocks, args.dtypes, buckets))
    for kind, block, dtype_name, (bucket, n) in tqdm(jobs, desc="tuning"):
        dtype = getattr(torch, dtype_name)
        best = tune_one(kind, (block, block), dtype, n, args.repeats, args.quick)
        if best is not None:
            table[tuning.table_key(kind, (block, block), dtype, bucket)] = best
            args.output.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(table)} entries to {args.output}")


if __name__ == "__main__":
    main()
