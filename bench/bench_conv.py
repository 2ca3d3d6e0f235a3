"""The 16 block 3x3 convolutions of a CIFAR ResNet-18: dense nn.Conv2d vs SparseConv2d.

Forward + backward (input and weight gradients) of all 16 convolutions at batch 32, timed
interleaved in one process (medians), at several sparsities and both block granularities, our
kernels once per instruction set this CPU runs, against the faster of dense NCHW and dense
channels_last measured in the same run; plus the peak resident memory of a whole ResNet-18
training step, dense vs sparse, each measured in a fresh process.

    python bench/bench_conv.py                 # 32x32 and 28x28 inputs, several minutes
    python bench/bench_conv.py --sizes 32 --sparsities 0.9 --repeats 3 --isas avx2
"""

from __future__ import annotations

import argparse
import copy
import datetime
import multiprocessing

import torch
from timing import (
    cache_evictor,
    efficiency,
    emit,
    interleaved_medians,
    isa_peaks,
    machine_line,
    on_isa,
    peak_rss_mb,
    supported_isas,
)
from torch import nn
from tqdm import tqdm

import sparcl_kernels as sk
from sparcl.models.resnet import BLOCK_CONV_PATTERNS, resnet18
from sparcl_kernels.nn import SparseConv2d


def block_convs(model: nn.Module, image_size: int) -> list[tuple[str, nn.Conv2d, torch.Size]]:
    """The residual-block 3x3 convs of ``model`` with the input shape each one sees."""
    shapes: dict[str, torch.Size] = {}
    convs = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and name.startswith("layer") and ".conv" in name
    ]
    hooks = [
        module.register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, i[0].shape)
        )
        for name, module in convs
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return [(name, module, shapes[name]) for name, module in convs]


def step_flops(layers: list[tuple[nn.Module, torch.Tensor]]) -> float:
    """FLOPs of forward + both gradients of ``layers``: on the stored blocks for sparse layers
    (each block is bm x bk multiply-adds per output pixel), on the whole weight for dense."""
    total = 0.0
    for layer, x in layers:
        kh, kw = layer.kernel_size
        out_h = (x.shape[2] + 2 * layer.padding[0] - kh) // layer.stride[0] + 1
        out_w = (x.shape[3] + 2 * layer.padding[1] - kw) // layer.stride[1] + 1
        sparse = isinstance(layer, SparseConv2d)
        weights = layer.values.numel() if sparse else layer.weight.numel()
        total += 3 * 2.0 * x.shape[0] * out_h * out_w * weights
    return total


def step_fn(layers: list[tuple[nn.Module, torch.Tensor]]):
    def step():
        for layer, x in layers:
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            out = layer(x)
            out.backward(torch.ones_like(out))

    return step


def conv_table(
    image_size: int,
    sparsities: list[float],
    block: int,
    repeats: int,
    isas: list[str],
    peaks: dict[str, float],
) -> list[str]:
    torch.manual_seed(0)
    convs = block_convs(resnet18(10), image_size)
    channels_last = torch.channels_last
    inputs = [torch.randn(32, *shape[1:]) for _, _, shape in convs]
    inputs_cl = [x.to(memory_format=channels_last).requires_grad_() for x in inputs]
    inputs = [x.requires_grad_() for x in inputs]
    dense_cl = [copy.deepcopy(conv).to(memory_format=channels_last) for _, conv, _ in convs]
    dense_layers = list(zip(dense_cl, inputs_cl, strict=True))
    fns = {
        "dense NCHW": step_fn([(conv, x) for (_, conv, _), x in zip(convs, inputs, strict=True)]),
        "dense channels_last": step_fn(dense_layers),
    }
    flops = {
        "dense NCHW": step_flops(dense_layers),
        "dense channels_last": step_flops(dense_layers),
    }
    for sparsity in sparsities:
        per_tap, all_taps = [], []
        for (_, conv, _), x in zip(convs, inputs_cl, strict=True):
            per_tap.append((SparseConv2d.from_dense(conv, sparsity, block), x))
            all_taps.append((SparseConv2d.from_dense(conv, sparsity, block, "all"), x))
        for isa in isas:
            fns[f"per-tap {sparsity:g} {isa}"] = on_isa(isa, step_fn(per_tap))
            fns[f"all-taps {sparsity:g} {isa}"] = on_isa(isa, step_fn(all_taps))
            flops[f"per-tap {sparsity:g} {isa}"] = step_flops(per_tap)
            flops[f"all-taps {sparsity:g} {isa}"] = step_flops(all_taps)
    times = interleaved_medians(fns, repeats=repeats, warmup=1, before=cache_evictor())
    best = min(("dense NCHW", "dense channels_last"), key=times.__getitem__)
    lines = [
        f"\n#### {image_size}x{image_size} input, batch 32, blocks {block}x{block}\n",
        f"Baseline: {best} (the faster dense format in this run). Sparse layers get "
        "channels_last inputs.\n",
        "| variant | ISA | sparsity | ms per fwd+bwd of the 16 convs | vs best dense "
        "| GFLOP/s on stored blocks (of the ISA's peak) |",
        "|---|---|---|---|---|---|",
    ]
    best_peak = max(peaks.values())
    for name in ("dense NCHW", "dense channels_last"):
        lines.append(
            f"| {name} nn.Conv2d | - | 0 | {times[name] * 1e3:.0f} | "
            f"{times[best] / times[name]:.2f}x "
            f"| {efficiency(flops[name], times[name], best_peak)} |"
        )
    for name, seconds in times.items():
        if name.startswith("dense"):
            continue
        variant, sparsity, isa = name.split()
        lines.append(
            f"| {variant} blocks | {isa} | {sparsity} | {seconds * 1e3:.0f} | "
            f"{times[best] / seconds:.2f}x | {efficiency(flops[name], seconds, peaks[isa])} |"
        )
    return lines


def _peak_rss_of_training_steps(kind: str, sparsity: float, block: int, queue) -> None:
    torch.manual_seed(0)
    model = resnet18(10)
    if kind == "sparse":
        sk.sparsify(model, sparsity, block, include=BLOCK_CONV_PATTERNS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    queue.put(peak_rss_mb())


def memory_table(sparsity: float, block: int) -> list[str]:
    context = multiprocessing.get_context("spawn")
    peaks = {}
    for kind in ("dense", "sparse"):
        queue = context.Queue()
        process = context.Process(
            target=_peak_rss_of_training_steps, args=(kind, sparsity, block, queue)
        )
        process.start()
        peaks[kind] = queue.get()
        process.join()
    return [
        "\n#### Peak RSS of ResNet-18 (nf=64) training steps, batch 32, 32x32, SGD "
        "(fresh process each, torch runtime included)\n",
        "| model | peak RSS MB |",
        "|---|---|",
        f"| dense | {peaks['dense']:.0f} |",
        f"| block convs sparse at {sparsity:g} ({block}x{block}) | {peaks['sparse']:.0f} "
        f"({peaks['sparse'] / peaks['dense']:.0%} of dense) |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 28])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.75, 0.9, 0.95])
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--isas", nargs="+", default=None, help="instruction sets (default: all this CPU runs)"
    )
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    isas = args.isas or supported_isas()
    threads = torch.get_num_threads()
    peaks = isa_peaks(isas, threads)
    lines = [
        f"{datetime.date.today()} · torch {torch.__version__} · {threads} threads"
        f" · medians of {args.repeats} interleaved repeats · fp32",
        machine_line(peaks, threads) + " (dense: of the widest ISA's peak)",
    ]
    for size in tqdm(args.sizes, desc="input sizes"):
        lines += conv_table(size, args.sparsities, args.block, args.repeats, isas, peaks)
    if args.memory:
        lines += memory_table(0.9, args.block)
    text = "\n".join(lines)
    emit(text, args.markdown)


if __name__ == "__main__":
    main()
