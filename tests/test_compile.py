"""torch.compile(fullgraph=True) through the custom ops matches eager, forward and backward;
dispatch modes see the custom ops; plain eager calls skip them and compute the same."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import random_block_mask
from torch.utils._python_dispatch import TorchDispatchMode

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


class _RecordOps(TorchDispatchMode):
    """Records the name of every op dispatched while active (a pass-through mode)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _linear_and_conv_steps(generator):
    """(name, step) pairs: each step runs a forward and backward and returns output + grads."""
    layout = sk.BlockLayout.from_block_mask(random_block_mask((4, 9), 0.5, generator), (8, 4))
    values = torch.randn(layout.values_shape, generator=generator)
    bias = torch.randn(32, generator=generator)
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.5
    x_linear = torch.randn(5, 36, generator=generator)
    x_conv = torch.randn(2, 4, 5, 5, generator=generator).to(memory_format=torch.channels_last)

    def linear(x, values, bias):
        return sk.block_sparse_linear(x, values, layout, bias, grad_mask, backend="cpu")

    def conv(x, values, bias):
        return sk.block_sparse_conv2d(
            x, values, layout, (3, 3), (2, 1), (1, 1), bias=bias, grad_block_mask=grad_mask,
            backend="cpu",
        )  # fmt: skip

    def step(op, x):
        def run():
            inputs = [t.clone().requires_grad_() for t in (x, values, bias)]
            y = op(*inputs)
            y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
            return [y.detach()] + [t.grad for t in inputs]

        return run

    return [("linear", step(linear, x_linear)), ("conv", step(conv, x_conv))]


@pytest.mark.parametrize("case", [0, 1], ids=["linear", "conv"])
def test_dispatch_modes_see_the_custom_ops(case):
    """FLOP counters, fake tensors and make_fx work through the ops' registrations."""
    _, run = _linear_and_conv_steps(torch.Generator().manual_seed(0))[case]
    with _RecordOps() as mode:
        run()
    for name in ("forward", "grad_input", "grad_weight"):
        assert f"sparcl_kernels.{name}" in mode.names


@pytest.mark.parametrize("case", [0, 1], ids=["linear", "conv"])
def test_plain_eager_calls_skip_the_custom_ops_and_agree(case, monkeypatch):
    """The eager path computes exactly what the custom-op path does, without dispatching it
    (the custom op's Python wrapper cost ~0.35 ms per layer call, issue 15)."""
    _, run = _linear_and_conv_steps(torch.Generator().manual_seed(0))[case]
    with _RecordOps():
        through_custom_op = run()

    def forbidden(*args, **kwargs):
        raise AssertionError("a plain eager call went through the custom op")

    monkeypatch.setattr(sk.ops, "_forward_op", forbidden)
    eager = run()
    for got, want in zip(eager, through_custom_op, strict=True):
        assert torch.equal(got, want)
