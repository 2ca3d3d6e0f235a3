"""CPU kernel benchmark: dense torch vs block-sparse (ours) vs torch BSR, one table per pass.

Every configuration times all contenders interleaved in one process and reports medians, so
the ratios are side by side; absolute times drift between runs on shared machines. Our
kernels are timed once per instruction set this CPU runs (--isas), in the same run.

    python bench/bench_cpu.py                       # the full grid (several minutes on 2 cores)
    python bench/bench_cpu.py --shapes 2048x2048 --batches 256 --blocks 32 --markdown out.md
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import platform
import warnings
from dataclasses import dataclass

import torch
from timing import (
    cache_evictor,
    efficiency,
    emit,
    interleaved_medians,
    isa_peaks,
    machine_line,
    on_isa,
    supported_isas,
)
from tqdm import tqdm

import sparcl_kernels as sk
from sparcl_kernels.backends import get_backend

PASSES = ("forward", "input grad", "weight grad", "all three")


@dataclass
class Row:
    in_features: int
    out_features: int
    batch: int
    block: int
    sparsity: float
    isa: str
    dense_ms: dict[str, float]
    ours_ms: dict[str, float]
    bsr_forward_ms: float | None
    masked_weight_grad_ms: float  # weight grad with a grad mask keeping 20% of stored blocks
    stored_flops: float  # one pass's multiply-adds on the stored blocks, x2

    def pass_flops(self, pass_name: str, stored: bool) -> float:
        """FLOPs of ``pass_name`` on the stored blocks (``stored``) or on the dense weight."""
        one = (
            self.stored_flops if stored else 2.0 * self.batch * self.in_features * self.out_features
        )
        return 3 * one if pass_name == "all three" else one


def measure(
    in_f: int, out_f: int, batch: int, block: int, sparsity: float, repeats: int, isas: list[str]
) -> list[Row]:
    """One row per instruction set; dense, BSR and every instruction set timed interleaved."""
    generator = torch.Generator().manual_seed(0)
    dense = torch.nn.Linear(in_f, out_f)
    layout = sk.BlockLayout.from_dense(dense.weight, block, sparsity)
    weight = layout.to_dense(layout.to_blocks(dense.weight.detach()))
    values = torch.nn.Parameter(layout.to_blocks(weight))
    bias = torch.nn.Parameter(dense.bias.detach().clone())
    x = torch.randn(batch, in_f, generator=generator)
    x_t = x.t().contiguous()
    x_grad = x.clone().requires_grad_()  # "all three": the input gradient is computed too
    grad_out = torch.randn(batch, out_f, generator=generator)
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.2
    cpu = get_backend("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that sparse BSR support is in beta
        bsr = weight.to_sparse_bsr((block, block))

    def dense_step():
        dense.zero_grad(set_to_none=True)
        x_grad.grad = None
        dense(x_grad).backward(grad_out)

    def ours_step():
        values.grad = bias.grad = x_grad.grad = None
        sk.block_sparse_linear(x_grad, values, layout, bias, backend="cpu").backward(grad_out)

    # Detached once, as a layer's parameter is one tensor across steps: the backend keeps
    # the forward's transposed blocks per values tensor (a fresh detach() per call would
    # time a transpose the layer never repeats).
    weights, bias_values = values.detach(), bias.detach()
    ours = {
        "forward": lambda: cpu.forward(x, weights, layout, bias_values),
        "input grad": lambda: cpu.grad_input(grad_out, weights, layout),
        "weight grad": lambda: cpu.grad_weight(grad_out, x, layout, None),
        "all three": ours_step,
        "masked": lambda: cpu.grad_weight(grad_out, x, layout, grad_mask),
    }
    fns = {
        "dense forward": lambda: torch.nn.functional.linear(x, weight, bias),
        "dense input grad": lambda: grad_out @ weight,
        "dense weight grad": lambda: grad_out.t() @ x,
        "dense all three": dense_step,
    }
    for isa in isas:
        fns.update({f"{isa} {name}": on_isa(isa, fn) for name, fn in ours.items()})
    if layout.nnz:
        # Favours BSR: x is transposed outside the timed region.
        fns["bsr forward"] = lambda: bsr @ x_t
    times = interleaved_medians(fns, repeats=repeats, warmup=2, before=cache_evictor())
    cpu.select_isa(None)
    return [
        Row(
            in_f,
            out_f,
            batch,
            block,
            sparsity,
            isa,
            {p: times[f"dense {p}"] * 1e3 for p in PASSES},
            {p: times[f"{isa} {p}"] * 1e3 for p in PASSES},
            times["bsr forward"] * 1e3 if "bsr forward" in times else None,
            times[f"{isa} masked"] * 1e3,
            2.0 * batch * layout.nnz * block * block,
        )
        for isa in isas
    ]


def break_even(rows: list[Row], pass_name: str) -> dict[tuple, str]:
    """Lowest measured sparsity at which ours is at least as fast as dense, per problem."""
    result: dict[tuple, str] = {}
    for row in sorted(rows, key=lambda r: r.sparsity):
        key = (row.in_features, row.out_features, row.batch, row.block, row.isa)
        if key not in result and row.ours_ms[pass_name] <= row.dense_ms[pass_name]:
            result[key] = f"{row.sparsity:g}"
    return result


def tables(rows: list[Row], peaks: dict[str, float]) -> str:
    """One table per pass; GFLOP/s (on stored blocks for ours, on the whole weight for dense)
    with its fraction of the ISA's measured peak (dense: of the best ISA's)."""
    lines = []
    best_peak = max(peaks.values())
    for pass_name in PASSES:
        even = break_even(rows, pass_name)
        lines += [
            f"\n### {pass_name}\n",
            "| in x out | N | block | sparsity | ISA | dense ms | ours ms | BSR fwd ms "
            "| ours vs dense | of ideal 1/(1-s) | break-even s | ours GFLOP/s (of peak) "
            "| dense GFLOP/s (of peak) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            dense_ms, ours_ms = r.dense_ms[pass_name], r.ours_ms[pass_name]
            speedup = dense_ms / ours_ms
            ideal = 1 / (1 - r.sparsity)
            bsr = f"{r.bsr_forward_ms:.3f}" if pass_name == "forward" and r.bsr_forward_ms else "-"
            key = (r.in_features, r.out_features, r.batch, r.block, r.isa)
            lines.append(
                f"| {r.in_features}x{r.out_features} | {r.batch} | {r.block} | {r.sparsity:g} "
                f"| {r.isa} | {dense_ms:.3f} | {ours_ms:.3f} | {bsr} | {speedup:.2f}x "
                f"| {speedup / ideal:.0%} | {even.get(key, '> max')} "
                f"| {efficiency(r.pass_flops(pass_name, True), ours_ms / 1e3, peaks[r.isa])} "
                f"| {efficiency(r.pass_flops(pass_name, False), dense_ms / 1e3, best_peak)} |"
            )
    lines += [
        "\n### weight grad with a grad mask keeping 20% of stored blocks\n",
        "| in x out | N | block | sparsity | ISA | unmasked ms | masked ms | masked / unmasked |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        full, masked = r.ours_ms["weight grad"], r.masked_weight_grad_ms
        lines.append(
            f"| {r.in_features}x{r.out_features} | {r.batch} | {r.block} | {r.sparsity:g} "
            f"| {r.isa} | {full:.3f} | {masked:.3f} | {masked / full:.0%} |"
        )
    return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, int]:
    in_f, out_f = (int(v) for v in text.lower().split("x"))
    return in_f, out_f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=["1024x1024", "2048x2048", "768x3072", "4096x1024"],
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--blocks", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9, 0.95, 0.98])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--isas", nargs="+", default=None, help="instruction sets (default: all this CPU runs)"
    )
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    shapes = [parse_shape(s) if isinstance(s, str) else s for s in args.shapes]
    torch.set_num_threads(args.threads)

    grid = list(itertools.product(shapes, args.batches, args.blocks, args.sparsities))
    isas = args.isas or supported_isas()
    peaks = isa_peaks(isas, args.threads)
    rows = [
        row
        for (in_f, out_f), batch, block, sparsity in tqdm(grid, desc="configurations")
        for row in measure(in_f, out_f, batch, block, sparsity, args.repeats, isas)
    ]
    header = (
        f"{datetime.date.today()} · torch {torch.__version__} · {args.threads} threads · "
        f"{platform.machine()} · cpu backend {sk.backend_info()['backends']['cpu']}"
        f" · medians of {args.repeats} interleaved repeats · fp32"
    )
    text = header + "\n" + machine_line(peaks, args.threads) + "\n" + tables(rows, peaks)
    emit(text, args.markdown)


if __name__ == "__main__":
    main()
