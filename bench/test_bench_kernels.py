"""pytest-benchmark cases for the CPU kernels (not part of `make test`).

    .venv/bin/python -m pytest bench/test_bench_kernels.py --benchmark-group-by=param:sparsity

Each group holds dense nn.Linear and block_sparse_linear for one sparsity, forward + backward
of a 2048x2048 layer on a batch of 256 with 32x32 blocks, so the table reads as ratios.
"""

from __future__ import annotations

import pytest
import torch

import sparcl_kernels as sk

FEATURES, BATCH, BLOCK = 2048, 256, 32


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, FEATURES, generator=generator)
    grad_out = torch.randn(BATCH, FEATURES, generator=generator)
    return x, grad_out


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9, 0.95])
@pytest.mark.parametrize("kind", ["dense", "block_sparse", "block_sparse_gradmask20"])
def test_linear_training_step(benchmark, inputs, sparsity, kind):
    x, grad_out = inputs
    dense = torch.nn.Linear(FEATURES, FEATURES)
    if kind == "dense":
        benchmark(lambda: dense(x).backward(grad_out))
        return
    layout = sk.BlockLayout.from_dense(dense.weight, BLOCK, sparsity)
    values = torch.nn.Parameter(layout.to_blocks(dense.weight.detach()))
    bias = torch.nn.Parameter(dense.bias.detach().clone())
    grad_mask = None
    if kind == "block_sparse_gradmask20":
        grad_mask = torch.rand(layout.nnz, generator=torch.Generator().manual_seed(1)) < 0.2

    def step():
        sk.block_sparse_linear(x, values, layout, bias, grad_mask).backward(grad_out)

    benchmark(step)
