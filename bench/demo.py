"""The README's main job until the continual-learning layer lands.

Trains one 2048x2048 layer at 90% block sparsity (32x32 blocks) for a few steps with
``block_sparse_linear`` and with dense ``nn.Linear`` side by side, checks the sparse result
against the dense masked computation, and prints the backend used and the speed ratio.
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians  # bench/ is on sys.path when run as a script

import sparcl_kernels as sk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    dense = torch.nn.Linear(args.features, args.features)
    layout = sk.BlockLayout.from_dense(dense.weight, args.block, args.sparsity)
    values = torch.nn.Parameter(layout.to_blocks(dense.weight.detach()))
    bias = torch.nn.Parameter(dense.bias.detach().clone())
    x = torch.randn(args.batch, args.features)
    grad_out = torch.randn(args.batch, args.features)

    def sparse_step():
        values.grad = bias.grad = None
        sk.block_sparse_linear(x, values, layout, bias).backward(grad_out)

    def dense_step():
        dense.zero_grad(set_to_none=True)
        dense(x).backward(grad_out)

    with torch.no_grad():
        reference = x @ layout.to_dense(values).T + bias
        error = (sk.block_sparse_linear(x, values, layout, bias) - reference).abs().max().item()
    times = interleaved_medians({"dense": dense_step, "sparse": sparse_step}, args.repeats)
    info = sk.backend_info()
    print(f"backend for CPU tensors: {info['default']['cpu']}  threads: {torch.get_num_threads()}")
    print(
        f"layer {args.features}x{args.features}, batch {args.batch}, "
        f"sparsity {layout.sparsity:.2f}, blocks {layout.block_size}, "
        f"max |error| vs dense masked: {error:.2e}"
    )
    print(
        f"forward+backward median: dense {times['dense'] * 1e3:.2f} ms, "
        f"block-sparse {times['sparse'] * 1e3:.2f} ms, "
        f"speedup {times['dense'] / times['sparse']:.2f}x (ideal {1 / (1 - layout.sparsity):.1f}x)"
    )


if __name__ == "__main__":
    main()
