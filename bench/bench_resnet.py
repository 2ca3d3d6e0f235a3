"""End-to-end SGD step of a CIFAR ResNet-18: dense (NCHW and channels_last) vs block-sparse.

The model is defined here, independently of the package's own (a user's model), and only its
16 residual-block 3x3 convolutions are swapped for ``SparseConv2d.from_dense``; nothing else
changes. Every variant takes plain SGD steps (forward, cross-entropy, backward, update) on the
same batch, timed interleaved in one process (medians):

- dense NCHW and dense channels_last (model and input converted): the faster is the baseline;
- sparse, the user's NCHW model with the convs swapped by hand and nothing else changed;
- sparsify: ``sk.sparsify`` swapping the same convs, which also makes the model channels-last
  (its documented default); the input stays NCHW.

``--profile`` adds a torch.profiler table of the element-wise and BatchNorm ops per call (fp32)
and where the dense and sparsify steps spend their time in each of ``--precisions``.

    python bench/bench_resnet.py                              # 32x32 and 16x16 blocks
    python bench/bench_resnet.py --configs 32:0.9 --repeats 5 --profile
"""

from __future__ import annotations

import argparse
import copy
import datetime
import resource
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import breakdown_table, emit, interleaved_medians, profiled_ops
from torch import nn

import sparcl_kernels as sk
from sparcl_kernels.nn import SparseConv2d


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    def __init__(self, classes: int = 10, nf: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, nf, 3, 1, 1, bias=False), nn.BatchNorm2d(nf))
        stages, cin = [], nf
        for index, stride in enumerate((1, 2, 2, 2)):
            cout = nf * 2**index
            stages += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(F.relu(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


BLOCK_CONVS = ("stages.*.conv1", "stages.*.conv2")


def swap_block_convs(model: nn.Module, sparsity: float, block: int) -> nn.Module:
    """The user's way: replace each residual-block 3x3 conv with SparseConv2d.from_dense."""
    for stage in model.stages:
        for name in ("conv1", "conv2"):
            setattr(stage, name, SparseConv2d.from_dense(getattr(stage, name), sparsity, block))
    return model


def sgd_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str
) -> Callable[[], None]:
    """One SGD step; ``precision`` "bf16" runs the forward under CPU bf16 autocast (the
    masters, gradients and optimizer stay fp32, as users train)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03)
    autocast = precision == "bf16"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def variants(
    sparsity: float, block: int, batch: int, precisions: list[str]
) -> dict[tuple[str, str], Callable[[], None]]:
    """(variant, precision) -> its SGD step; each precision gets its own copy of the models."""
    torch.manual_seed(0)
    dense = CifarResNet18()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    x_cl = x.to(memory_format=torch.channels_last)
    cl = torch.channels_last
    by_hand = swap_block_convs(copy.deepcopy(dense), sparsity, block)
    sparsified = sk.sparsify(dense, sparsity, block, include=BLOCK_CONVS, inplace=False)
    models = {
        "dense NCHW": (dense, x),
        "dense channels_last": (copy.deepcopy(dense).to(memory_format=cl), x_cl),
        "sparse by hand (NCHW model)": (by_hand, x),
        "sparsify": (sparsified, x),
    }
    return {
        (name, precision): sgd_step(copy.deepcopy(model), inputs, y, precision)
        for precision in precisions
        for name, (model, inputs) in models.items()
    }


def speed_table(
    configs: list[tuple[int, float]], batch: int, repeats: int, precisions: list[str]
) -> list[str]:
    lines = [
        "| blocks | sparsity | precision | dense NCHW ms | dense channels_last ms "
        "| sparse by hand ms | sparsify ms | by hand vs best dense | sparsify vs best dense "
        "| sparsify vs its fp32 step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for block, sparsity in configs:
        fns = variants(sparsity, block, batch, precisions)
        t = {key: ms * 1e3 for key, ms in interleaved_medians(fns, repeats, warmup=2).items()}
        for precision in precisions:
            nchw_dense, cl_dense = t["dense NCHW", precision], t["dense channels_last", precision]
            best = min(nchw_dense, cl_dense)
            nchw, cl = t["sparse by hand (NCHW model)", precision], t["sparsify", precision]
            fp32 = t.get(("sparsify", "fp32"))
            versus_fp32 = f"{fp32 / cl:.2f}x" if fp32 is not None else "-"
            lines.append(
                f"| {block}x{block} | {sparsity:g} | {precision} | {nchw_dense:.0f} "
                f"| {cl_dense:.0f} | {nchw:.0f} | {cl:.0f} "
                f"| {best / nchw:.2f}x | {best / cl:.2f}x | {versus_fp32} |"
            )
    return lines


PROFILED_OPS = (
    "aten::threshold_backward",
    "aten::native_batch_norm_backward",
    "aten::native_batch_norm",
    "aten::clamp_min",
    "aten::relu",
    "aten::add",
    "aten::copy_",
)


def minor_page_faults() -> int:
    """Page faults this process took so far that needed no disk read (first touches of memory
    the allocator got from the kernel)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def profile_table(
    block: int, sparsity: float, batch: int, precisions: list[str], steps: int = 3
) -> list[str]:
    """Microseconds per call of the ops around the convolutions in each fp32 variant, the
    minor page faults per step, and where the step's time goes in the sparse and dense models
    in each precision (under bf16 autocast the dense ops run in bf16 too)."""
    per_call: dict[str, dict[str, float]] = {}
    faults: dict[str, float] = {}
    profiles = {}
    for (name, precision), step in variants(sparsity, block, batch, precisions).items():
        step()
        if precision == "fp32":
            before = minor_page_faults()
            for _ in range(steps):
                step()
            faults[name] = (minor_page_faults() - before) / steps
        profiles[name, precision] = events, _ = profiled_ops(step, steps)
        if precision == "fp32":
            per_call[name] = {
                op: events[op].cpu_time_total / events[op].count if op in events else 0.0
                for op in PROFILED_OPS
            }
    lines = []
    if per_call:
        names = list(per_call)
        lines += [
            f"\nMicroseconds per call (torch.profiler, {steps} steps, {block}x{block} blocks, "
            f"sparsity {sparsity:g}, fp32):\n",
            "| op | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for op in PROFILED_OPS:
            cells = " | ".join(f"{per_call[n][op]:.0f}" for n in names)
            lines.append(f"| `{op}` | {cells} |")
        cells = " | ".join(f"{faults[n]:.0f}" for n in names)
        lines.append(f"| minor page faults per step | {cells} |")
    lines += ["\nWhere the step's time goes (self CPU time by op category, same profile):\n"]
    lines += breakdown_table(
        {
            f"{name} {precision}": profiles[name, precision]
            for precision in precisions
            for name in ("dense channels_last", "sparsify")
        }
    )
    return lines


def parse_config(text: str) -> tuple[int, float]:
    block, sparsity = text.split(":")
    return int(block), float(sparsity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        type=parse_config,
        default=["32:0.9", "32:0.95", "16:0.9", "8:0.9"],
        help="block:sparsity pairs",
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "bf16"),
        default=["fp32"],
        help="bf16: the steps under CPU bf16 autocast, timed interleaved with the fp32 ones",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    configs = [parse_config(c) if isinstance(c, str) else c for c in args.configs]
    cpu = sk.backend_info()["backends"]["cpu"]
    lines = [
        f"{datetime.date.today()} · torch {torch.__version__} · {torch.get_num_threads()} threads"
        f" · cpu isa {cpu.get('isa')} · batch {args.batch} · medians of {args.repeats} "
        f"interleaved SGD steps · bf16 kernels: {cpu.get('bf16_kernels') or 'none'}\n",
        *speed_table(configs, args.batch, args.repeats, args.precisions),
    ]
    if args.profile:
        lines += profile_table(*configs[0], args.batch, args.precisions)
    emit("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
