"""Each pass of each of the 16 block 3x3 convolutions of a CIFAR ResNet-18, fp32 and bf16.

Where bench_conv.py times the 16 convolutions together through autograd, this times the CPU
backend's forward, input gradient and weight gradient of every layer on its own (batch 32,
32x32 input, or another width and size with --nf and --image; channels-last), the passes of
one layer interleaved (medians), so that the weak shapes show: few blocks per row in the
64-channel layers, stride-2 input gradients, narrow blocks. Efficiency is GFLOP/s on the
stored blocks over the measured peak of the arithmetic in use (fp32 FMA; for bf16 the
dot-product instruction, where the CPU has one).

    python bench/bench_conv_layers.py --block 32 --precisions fp32 bf16 --markdown out.md
    python bench/bench_conv_layers.py --nf 32 --image 28   # make run's network
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch
from bench_conv import block_convs
from timing import bf16_peak, emit, interleaved_medians, machine_line, sampled_peak

from sparcl.models.resnet import resnet18
from sparcl_kernels.backends import cpu
from sparcl_kernels.geometry import ConvGeometry
from sparcl_kernels.nn import SparseConv2d

PASSES = ("forward", "input grad", "weight grad")


def layer_passes(
    conv: torch.nn.Conv2d,
    shape: torch.Size,
    block: int,
    sparsity: float,
    precision: str,
    repeats: int,
) -> tuple[dict[str, float], float]:
    """Median milliseconds of each pass of ``conv`` made block-sparse, and its FLOPs."""
    layer = SparseConv2d.from_dense(conv, sparsity, block)
    geometry = ConvGeometry.of(conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(32, *shape[1:]).permute(0, 2, 3, 1).contiguous().to(dtype)
    values, layout = layer.values.detach(), layer.layout
    grad_out = torch.randn_like(cpu.conv_forward(x, values, layout, None, geometry))
    fns = {
        "forward": lambda: cpu.conv_forward(x, values, layout, None, geometry),
        "input grad": lambda: cpu.conv_grad_input(
            grad_out, values, layout, geometry, tuple(shape[2:])
        ),
        "weight grad": lambda: cpu.conv_grad_weight(grad_out, x, layout, None, geometry),
    }
    seconds = interleaved_medians(fns, repeats=repeats, warmup=2)
    pixels = grad_out.shape[0] * grad_out.shape[1] * grad_out.shape[2]
    return {name: s * 1e3 for name, s in seconds.items()}, 2.0 * pixels * values.numel()


def table(
    block: int,
    sparsity: float,
    precisions: list[str],
    repeats: int,
    nf: int,
    image: int,
    peaks: dict[str, float | None],
) -> list[str]:
    torch.manual_seed(0)
    header = "| layer | input | stride | stored blocks |"
    for precision in precisions:
        header += "".join(f" {precision} {name} ms (of peak) |" for name in PASSES)
    lines = [header, "|---|---|---|---|" + "---|" * 3 * len(precisions)]
    totals = {(p, name): 0.0 for p in precisions for name in PASSES}
    for name, conv, shape in block_convs(resnet18(10, nf), image):
        cells = ""
        for precision in precisions:
            times, flops = layer_passes(conv, shape, block, sparsity, precision, repeats)
            for pass_name in PASSES:
                totals[precision, pass_name] += times[pass_name]
                share = flops / times[pass_name] / 1e6 / peaks[precision]
                cells += f" {times[pass_name]:.2f} ({share:.0%}) |"
        blocks = SparseConv2d.from_dense(conv, sparsity, block).values.shape[0]
        lines.append(f"| {name} | {tuple(shape[1:])} | {conv.stride[0]} | {blocks} |{cells}")
    total_cells = "".join(f" {totals[p, name]:.1f} |" for p in precisions for name in PASSES)
    lines.append(f"| all 16 | | | |{total_cells}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--nf", type=int, default=64, help="the ResNet-18's first width")
    parser.add_argument("--image", type=int, default=32, help="input side (28: make run's)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    describe = cpu.describe()
    # One measurement of each peak, for the fractions and the header alike.
    peaks = {"fp32": sampled_peak(lambda: cpu.fma_peak(threads)), "bf16": None}
    if "bf16" in args.precisions:
        peaks["bf16"] = bf16_peak(threads)
        if peaks["bf16"] is None:
            sys.exit("bench_conv_layers.py: this CPU has no bf16 dot-product instruction")
    lines = [
        f"{datetime.date.today()} · torch {torch.__version__} · {threads} threads · "
        f"cpu isa {describe['isa']} · bf16 kernels: {describe['bf16_kernels']} · batch 32, "
        f"nf={args.nf}, {args.image}x{args.image} input, {args.block}x{args.block} blocks "
        f"at {args.sparsity:g} · medians of {args.repeats} interleaved repeats",
        machine_line({describe["isa"]: peaks["fp32"]}, threads, peaks["bf16"]),
        "",
        *table(
            args.block, args.sparsity, args.precisions, args.repeats, args.nf, args.image, peaks
        ),
    ]
    emit("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
