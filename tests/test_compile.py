"""torch.compile(fullgraph=True) through the custom ops matches eager, forward and backward."""

from __future__ import annotations

import subprocess
import sys

import torch
from conftest import random_block_mask

import sparcl_kernels as sk


def test_compiled_matches_eager(backend):
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    layout = sk.BlockLayout.from_block_mask(random_block_mask((4, 3), 0.5, generator), (8, 16))
    values = torch.randn(layout.values_shape, generator=generator, requires_grad=True)
    bias = torch.randn(32, generator=generator, requires_grad=True)
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.5
    x = torch.randn(2, 5, 48, generator=generator, requires_grad=True)

    def step(x, values, bias):
        y = sk.block_sparse_linear(x, values, layout, bias, grad_mask, backend=backend)
        return torch.tanh(y).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    eager_loss = step(x, values, bias)
    eager_grads = torch.autograd.grad(eager_loss, (x, values, bias))
    compiled_loss = compiled(x, values, bias)
    compiled_grads = torch.autograd.grad(compiled_loss, (x, values, bias))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.all(compiled_grads[1][~grad_mask] == 0)


def test_constant_marker_is_the_one_torch_sets():
    """ops.py marks its backend choice as dynamo does, without importing torch._dynamo."""

    def probe():
        return None

    torch.compiler.assume_constant_result(probe)
    assert vars(probe) == {"_dynamo_marked_constant": True}
    assert vars(sk.ops._select_backend) == {"_dynamo_marked_constant": True}


def test_importing_the_package_does_not_load_dynamo():
    """torch._dynamo (and triton behind it) costs ~140 MB of memory in every process."""
    code = "import sys, sparcl_kernels, sparcl.train; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
