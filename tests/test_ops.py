"""block_sparse_linear against the dense masked oracle, gradcheck, and property-based layouts."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS, assert_matches_dense, random_block_mask
from hypothesis import given, settings
from hypothesis import strategies as st

import sparcl_kernels as sk
from sparcl_kernels import BlockLayout


def _problem(grid, block_size, density, batch_shape, dtype=torch.float32, seed=0, bias=True):
    generator = torch.Generator().manual_seed(seed)
    mask = random_block_mask(grid, density, generator)
    layout = BlockLayout.from_block_mask(mask, block_size)
    m, k = layout.shape
    x = torch.randn(*batch_shape, k, generator=generator, dtype=dtype)
    values = torch.randn(layout.values_shape, generator=generator, dtype=dtype)
    b = torch.randn(m, generator=generator, dtype=dtype) if bias else None
    return x, values, layout, b, generator


# ---------------------------------------------------------------- gradcheck (reference, fp64)


@pytest.mark.parametrize("with_bias", [False, True])
def test_reference_gradcheck(with_bias):
    x, values, layout, bias, _ = _problem((3, 4), (4, 2), 0.5, (5,), torch.float64, bias=with_bias)
    inputs = [x.requires_grad_(), values.requires_grad_()]
    if with_bias:
        inputs.append(bias.requires_grad_())

    def fn(x, values, *maybe_bias):
        return sk.block_sparse_linear(x, values, layout, *maybe_bias, backend="reference")

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("with_bias", [False, True])
def test_reference_gradcheck_with_grad_mask(with_bias):
    """Active blocks get the true gradient; off blocks are held constant by construction."""
    x, values, layout, bias, generator = _problem(
        (3, 4), (2, 4), 0.7, (2, 3), torch.float64, bias=with_bias
    )
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.5
    grad_mask[0] = True
    grad_mask[-1] = False
    active = grad_mask.nonzero().squeeze(1)
    frozen = values.clone()

    def fn(x, active_values, *maybe_bias):
        full = frozen.index_put((active,), active_values)
        return sk.block_sparse_linear(
            x, full, layout, *maybe_bias, grad_block_mask=grad_mask, backend="reference"
        )

    inputs = [x.requires_grad_(), values[active].clone().requires_grad_()]
    if with_bias:
        inputs.append(bias.requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_on_backend_fp64(backend):
    x, values, layout, bias, _ = _problem((2, 3), (4, 4), 0.6, (3,), torch.float64)
    fn = lambda x, v, b: sk.block_sparse_linear(x, v, layout, b, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(
        fn, (x.requires_grad_(), values.requires_grad_(), bias.requires_grad_())
    )


# ---------------------------------------------------------------- against the dense masked oracle


@pytest.mark.parametrize(
    "block_size", [(8, 8), (16, 16), (32, 32), (64, 64), (16, 32), (32, 8)], ids=str
)
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_dense(backend, block_size, density, dtype):
    grid = (128 // block_size[0], 128 // block_size[1])
    x, values, layout, bias, generator = _problem(grid, block_size, density, (7,), dtype)
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.5
    assert_matches_dense(x, values, layout, bias, None, backend)
    assert_matches_dense(x, values, layout, bias, grad_mask, backend)


def test_empty_block_rows_and_columns(backend):
    mask = torch.tensor([[0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=torch.bool)
    layout = BlockLayout.from_block_mask(mask, (8, 16))
    x = torch.randn(5, 64)
    values = torch.randn(layout.values_shape)
    bias = torch.randn(32)
    assert_matches_dense(x, values, layout, bias, None, backend)
    y = sk.block_sparse_linear(x, values, layout, bias, backend=backend)
    # Empty block rows produce exactly the bias.
    assert torch.equal(y[:, :8], bias[:8].expand(5, 8))


@pytest.mark.parametrize("batch_shape", [(1,), (2, 3), (2, 1, 5), ()], ids=str)
def test_leading_dims(backend, batch_shape):
    x, values, layout, bias, _ = _problem((2, 4), (16, 8), 0.5, batch_shape)
    y = sk.block_sparse_linear(x, values, layout, bias, backend=backend)
    assert y.shape == (*batch_shape, 32)
    assert_matches_dense(x, values, layout, bias, None, backend)


def test_non_contiguous_inputs(backend):
    _, _, layout, _, generator = _problem((4, 4), (8, 8), 0.5, (6,))
    x_wide = torch.randn(32, 12, generator=generator)
    x_nc = x_wide.t()[:, :][::2]  # [6, 32] non-contiguous
    assert not x_nc.is_contiguous()
    values_nc = torch.randn(layout.nnz, 8, 8, generator=generator).transpose(1, 2)
    assert not values_nc.is_contiguous()
    bias_nc = torch.randn(64, generator=generator)[::2]
    assert_matches_dense(x_nc, values_nc, layout, bias_nc, None, backend)


def test_grad_mask_all_false_gives_exact_zero(backend):
    x, values, layout, bias, _ = _problem((4, 4), (8, 8), 0.5, (6,))
    mask = torch.zeros(layout.nnz, dtype=torch.bool)
    values.requires_grad_()
    x.requires_grad_()
    sk.block_sparse_linear(x, values, layout, bias, mask, backend=backend).sum().backward()
    assert torch.equal(values.grad, torch.zeros_like(values))
    assert x.grad.abs().sum() > 0  # dX is never masked


def test_only_requested_gradients_are_computed(backend):
    x, values, layout, _, _ = _problem((2, 2), (8, 8), 1.0, (4,))
    values.requires_grad_()
    sk.block_sparse_linear(x, values, layout, backend=backend).sum().backward()
    assert x.grad is None and values.grad is not None


def test_empty_batch(backend):
    x, values, layout, bias, _ = _problem((2, 2), (8, 8), 1.0, (0,))
    values.requires_grad_()
    y = sk.block_sparse_linear(x, values, layout, bias, backend=backend)
    assert y.shape == (0, 16)
    y.sum().backward()
    assert torch.equal(values.grad, torch.zeros_like(values))


# ---------------------------------------------------------------- property-based


@st.composite
def layouts_and_inputs(draw):
    bm = draw(st.sampled_from([1, 2, 4, 8, 16]))
    bk = draw(st.sampled_from([1, 2, 4, 8, 16]))
    rows = draw(st.integers(1, 6))
    cols = draw(st.integers(1, 6))
    cells = draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols))
    mask = torch.tensor(cells, dtype=torch.bool).view(rows, cols)
    batch_shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    seed = draw(st.integers(0, 2**16))
    with_bias = draw(st.booleans())
    with_grad_mask = draw(st.booleans())
    return mask, (bm, bk), batch_shape, seed, with_bias, with_grad_mask


@settings(max_examples=60, deadline=None)
@given(layouts_and_inputs())
def test_property_random_layouts(case):
    mask, block_size, batch_shape, seed, with_bias, with_grad_mask = case
    generator = torch.Generator().manual_seed(seed)
    layout = BlockLayout.from_block_mask(mask, block_size)
    m, k = layout.shape
    x = torch.randn(*batch_shape, k, generator=generator, dtype=torch.float64)
    values = torch.randn(layout.values_shape, generator=generator, dtype=torch.float64)
    bias = torch.randn(m, generator=generator, dtype=torch.float64) if with_bias else None
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.5 if with_grad_mask else None
    for backend in CPU_BACKENDS:
        assert_matches_dense(x, values, layout, bias, grad_mask, backend, seed)


# ---------------------------------------------------------------- argument checks


def _valid():
    layout = BlockLayout.from_block_mask(torch.tensor([[1, 0], [1, 1]], dtype=torch.bool), (4, 8))
    return {
        "x": torch.randn(3, 16),
        "values": torch.randn(3, 4, 8),
        "layout": layout,
        "bias": torch.randn(8),
        "grad_block_mask": torch.ones(3, dtype=torch.bool),
    }


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"x": torch.randn(3, 15)}, ValueError, "x must have last dimension K = 16"),
        ({"x": torch.randint(0, 3, (3, 16))}, TypeError, "x must be a floating-point"),
        ({"x": [[1.0] * 16]}, TypeError, "x must be a torch.Tensor"),
        ({"x": torch.randn(3, 16, dtype=torch.float64)}, TypeError, "values dtype"),
        ({"values": torch.randn(2, 4, 8)}, ValueError, r"values must have shape \(nnz, bm, bk\)"),
        ({"values": torch.randn(3, 8, 4)}, ValueError, "values must have shape"),
        ({"values": torch.randn(3, 4, 8, device="meta")}, ValueError, "values is on meta"),
        ({"layout": "dense"}, TypeError, "layout must be a BlockLayout"),
        ({"bias": torch.randn(9)}, ValueError, r"bias must have shape \(8,\)"),
        ({"bias": torch.randn(8, dtype=torch.float64)}, TypeError, "bias dtype"),
        (
            {"grad_block_mask": torch.ones(3)},
            TypeError,
            "grad_block_mask must have dtype torch.bool",
        ),
        (
            {"grad_block_mask": torch.ones(4, dtype=torch.bool)},
            ValueError,
            r"grad_block_mask must have shape \(nnz,\) = \(3,\)",
        ),
        ({"grad_block_mask": [True] * 3}, TypeError, "grad_block_mask must be a bool tensor"),
    ],
)
def test_argument_errors(change, error, match):
    args = {**_valid(), **change}
    with pytest.raises(error, match=match):
        sk.block_sparse_linear(**args, backend="reference")


def test_layout_on_other_device_is_rejected():
    args = _valid()
    args["layout"] = args["layout"].to("meta")
    with pytest.raises(ValueError, match="layout is on meta"):
        sk.block_sparse_linear(**args, backend="reference")


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        sk.block_sparse_linear(**_valid(), backend="fast")


def test_reference_supports_low_precision():
    args = {
        k: v.to(torch.bfloat16) if v.is_floating_point() else v
        for k, v in _valid().items()
        if k != "layout"
    }
    y = sk.block_sparse_linear(**args, layout=_valid()["layout"], backend="reference")
    assert y.dtype == torch.bfloat16
