"""Fixed cost per layer call: a tiny sparse convolution whose kernels take microseconds.

What a sparse layer costs on top of its kernels is paid once per layer per step (48 conv calls
in a SparCL-DER++ step). Timed interleaved (medians of many calls), at 2 threads:

- dense ``nn.Conv2d`` (channels_last), the reference for per-call cost;
- ``SparseConv2d`` as a model calls it (the eager path: a ``torch.autograd.Function``);
- the same passes through the registered ``torch.library`` custom op, which traced calls
  (torch.compile, dispatch modes) take, called directly with its autograd;
- the C++ forward kernel alone.

    python bench/bench_overhead.py
"""

from __future__ import annotations

import argparse
import datetime

import torch
from timing import emit, interleaved_medians

from sparcl_kernels import ops
from sparcl_kernels.backends import cpu
from sparcl_kernels.geometry import ConvGeometry
from sparcl_kernels.nn import SparseConv2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2001, help="timed calls per variant")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = torch.nn.Conv2d(32, 32, 3, 1, 1, bias=False).to(memory_format=torch.channels_last)
    sparse = SparseConv2d.from_dense(dense, 0.5, 32)
    x = torch.randn(1, 32, 2, 2).to(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(1, 32, 2, 2).to(memory_format=torch.channels_last)
    geometry = ConvGeometry.of((3, 3), (1, 1), (1, 1))
    x_nhwc = x.detach().permute(0, 2, 3, 1).contiguous().requires_grad_()
    values, layout = sparse.values, sparse.layout
    x_plain, weights = x_nhwc.detach(), values.detach()  # once: the backend caches per tensor

    def custom_op():
        y = ops._forward_op(x_nhwc, values, layout.tensors(), None, None, list(geometry), "cpu")
        y.backward(grad.permute(0, 2, 3, 1))

    variants = {
        "dense nn.Conv2d, fwd + bwd": lambda: dense(x).backward(grad),
        "SparseConv2d (eager path), fwd + bwd": lambda: sparse(x).backward(grad),
        "the custom op with its autograd, fwd + bwd": custom_op,
        "C++ forward kernel alone": lambda: cpu.conv_forward(
            x_plain, weights, layout, None, geometry
        ),
    }
    times = interleaved_medians(variants, args.calls, warmup=50)
    lines = [
        f"{datetime.date.today()} · torch {torch.__version__} · {torch.get_num_threads()} threads"
        f" · 32 -> 32 channels, 3x3, 1x2x2 input, 2 of 4 blocks of 32x32 · medians of "
        f"{args.calls} interleaved calls\n",
        "| variant | us per call |",
        "|---|---|",
        *(f"| {name} | {seconds * 1e6:.0f} |" for name, seconds in times.items()),
    ]
    emit("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
