"""Derivatives beyond the first: double backward (gradient penalties), gradgradcheck in fp64 on
every route a call can take (eager Functions, the custom ops, torch.func), and torch.func."""

from __future__ import annotations

import pytest
import torch
from conftest import random_block_mask

import sparcl_kernels as sk
from sparcl_kernels import BlockLayout, ops


@pytest.fixture(params=["reference", "cpu"])
def backend(request):
    return request.param


def _linear_problem(seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    layout = BlockLayout.from_block_mask(random_block_mask((3, 4), 0.6, generator), (4, 2))
    m, k = layout.shape
    x = torch.randn(5, k, generator=generator, dtype=dtype, requires_grad=True)
    values = torch.randn(layout.values_shape, generator=generator, dtype=dtype)
    bias = torch.randn(m, generator=generator, dtype=dtype, requires_grad=True)
    mask = torch.rand(layout.nnz, generator=generator) < 0.5
    return x, values.requires_grad_(), bias, layout, mask


def _force_route(monkeypatch, route):
    monkeypatch.setattr(ops, "_route", lambda *tensors: route)


@pytest.mark.parametrize("route", ["eager", "op"])
@pytest.mark.parametrize("masked", [False, True])
def test_linear_gradgradcheck_fp64(monkeypatch, backend, route, masked):
    x, values, bias, layout, mask = _linear_problem()
    _force_route(monkeypatch, route)

    def fn(x, values, bias):
        grad_mask = mask if masked else None
        return sk.block_sparse_linear(x, values, layout, bias, grad_mask, backend=backend)

    assert torch.autograd.gradgradcheck(fn, (x, values, bias))


@pytest.mark.parametrize("route", ["eager", "op"])
def test_conv_gradgradcheck_fp64(monkeypatch, backend, route):
    generator = torch.Generator().manual_seed(1)
    layout = BlockLayout.from_block_mask(random_block_mask((2, 18), 0.5, generator), (2, 2))
    x = torch.randn(2, 4, 5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    values = torch.randn(layout.values_shape, generator=generator, dtype=torch.float64)
    values.requires_grad_()
    mask = torch.rand(layout.nnz, generator=generator) < 0.6
    _force_route(monkeypatch, route)

    def fn(x, values):
        return sk.block_sparse_conv2d(
            x, values, layout, (3, 3), (2, 1), (1, 1), grad_block_mask=mask, backend=backend
        )

    assert torch.autograd.gradgradcheck(fn, (x, values))


def _penalty_grads(make_model):
    """Gradients of a gradient penalty ||d loss / d W1||^2 through Linear -> tanh -> layer."""
    torch.manual_seed(0)
    first, second = make_model()
    x = torch.randn(6, 16, dtype=torch.float64)
    loss = second(torch.tanh(first(x))).pow(2).sum()
    (g,) = torch.autograd.grad(loss, first.weight, create_graph=True)
    g.pow(2).sum().backward()
    return first.weight.grad


def test_gradient_penalty_matches_the_dense_model(backend, monkeypatch):
    """The reproducer of issue 26: the sparse model's penalty gradient was half the dense one."""
    monkeypatch.setenv("SPARCL_BACKEND", backend)
    torch.manual_seed(0)
    first = torch.nn.Linear(16, 16).double()
    sparse = sk.nn.SparseLinear(16, 16, block_size=(4, 4), sparsity=0.5).double()
    dense = torch.nn.Linear(16, 16).double()
    with torch.no_grad():
        dense.weight.copy_(sparse.to_dense().weight)
        dense.bias.copy_(sparse.bias)
    first_copy = torch.nn.Linear(16, 16).double()
    first_copy.load_state_dict(first.state_dict())
    ours = _penalty_grads(lambda: (first, sparse))
    expected = _penalty_grads(lambda: (first_copy, dense))
    torch.testing.assert_close(ours, expected)
    assert sparse.values.grad is not None


def test_torch_func_grad_matches_autograd(backend):
    x, values, bias, layout, mask = _linear_problem(seed=3)

    def loss(values, bias):
        y = sk.block_sparse_linear(x, values, layout, bias, mask, backend=backend)
        return y.sin().sum()

    grads = torch.func.grad(loss, argnums=(0, 1))(values, bias)
    expected = torch.autograd.grad(loss(values, bias), (values, bias))
    for ours, theirs in zip(grads, expected, strict=True):
        torch.testing.assert_close(ours, theirs)
    assert torch.all(grads[0][~mask] == 0)


def test_torch_func_hessian_vector_product(backend):
    """grad of grad under torch.func: the func route's backward stays differentiable."""
    x, values, bias, layout, _ = _linear_problem(seed=4)
    vector = torch.randn_like(x)

    def loss(x):
        return sk.block_sparse_linear(x, values, layout, bias, backend=backend).tanh().sum()

    def directional(x):
        return (torch.func.grad(loss)(x) * vector).sum()

    ours = torch.func.grad(directional)(x)
    x_ = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(loss(x_), x_, create_graph=True)
    (expected,) = torch.autograd.grad((g * vector).sum(), x_)
    torch.testing.assert_close(ours, expected)


def test_first_order_backward_builds_no_graph(backend):
    """Without create_graph the backward runs the raw kernels: no extra autograd nodes."""
    x, values, bias, layout, _ = _linear_problem(seed=5)
    y = sk.block_sparse_linear(x, values, layout, bias, backend=backend)
    (gx, gv) = torch.autograd.grad(y.sum(), (x, values))
    assert gx.grad_fn is None and gv.grad_fn is None
