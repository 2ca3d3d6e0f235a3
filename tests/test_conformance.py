"""One conformance suite for every backend: the protocol, then the six kernels against dense
oracles through the public ops.

Each test runs once per backend variant that can run here: the reference, the cpu backend
per instruction set, triton (in Triton's interpreter on CPU tensors, or on the GPU), and cuda
(GPU only; those variants carry the ``gpu`` marker). A case a backend's capabilities exclude
(a dtype or block size it does not take) is skipped for that backend, never run elsewhere:
the ops would send it to the reference kernels, which is not what is under test. Shapes are
small because the interpreter executes every Triton program in numpy. Backend-specific
behaviour (thread counts, instruction sets, Triton's launcher and tuning) lives in the
backend's own test file.
"""

from __future__ import annotations

import os
import types

import pytest
import torch
from conftest import CPU_ISA_VARIANTS, assert_matches_dense, select_cpu_isa, tolerances
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparcl_kernels as sk
from sparcl_kernels.backends import get_backend
from sparcl_kernels.backends.protocol import check_backend
from sparcl_kernels.layout import BlockLayout

GPU = torch.cuda.is_available()
_VARIANTS = [
    pytest.param(("reference", "cpu", None), id="reference"),
    *[pytest.param(("cpu", "cpu", v), id=f"cpu-{v[0]}") for v in CPU_ISA_VARIANTS],
    pytest.param(("triton", "cuda" if GPU else "cpu", None), id="triton"),
    pytest.param(("cuda", "cuda", None), id="cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=_VARIANTS)
def kernels(request):
    """(backend name, device) of one backend variant; skips where it cannot run here."""
    name, device, isa = request.param
    if device == "cuda" and not GPU:
        pytest.skip("needs a CUDA GPU")
    module = get_backend(name)  # every backend that ships must load where it can run
    if not module.supports_device(torch.device(device)):
        pytest.skip(f"{name} does not run on {device} here (TRITON_INTERPRET unset?)")
    if isa is not None:
        select_cpu_isa(isa[1], isa[2])
    yield name, device
    if isa is not None:
        from sparcl_kernels.backends import cpu

        cpu.select_isa(os.environ.get(cpu.ISA_ENV_VAR) or None)


def _require(name: str, dtype: torch.dtype, block_size: tuple[int, int]) -> None:
    module = get_backend(name)
    if dtype not in module.SUPPORTED_DTYPES:
        pytest.skip(f"{name} does not take {dtype}")
    if not module.supports_block_size(block_size):
        pytest.skip(f"{name} does not take block size {block_size}")


def _case(kernels, block_size, grid, density, n, dtype=torch.float32, seed=0):
    name, device = kernels
    _require(name, dtype, block_size)
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(grid, generator=generator) < density
    layout = BlockLayout.from_block_mask(mask, block_size)
    m, k = layout.shape
    x = torch.randn(n, k, generator=generator, dtype=dtype)
    values = torch.randn(layout.values_shape, generator=generator, dtype=dtype)
    bias = torch.randn(m, generator=generator, dtype=dtype)
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.5
    moved = [t.to(device) for t in (x, values, bias, grad_mask)]
    return layout.to(device), *moved


# ---------------------------------------------------------------- the protocol


def test_backend_module_satisfies_the_protocol(kernels):
    check_backend(get_backend(kernels[0]))


def test_a_backend_missing_a_kernel_is_named_when_it_loads():
    broken = types.ModuleType("sparcl_kernels.backends.broken")
    reference = get_backend("reference")
    for attribute in ("NAME", "SUPPORTED_DTYPES", "supports_device", "supports_block_size"):
        setattr(broken, attribute, getattr(reference, attribute))
    broken.describe = reference.describe
    broken.forward = reference.forward
    broken.grad_input = lambda grad_out, values: grad_out  # a parameter missing
    with pytest.raises(TypeError) as error:
        check_backend(broken)
    message = str(error.value)
    assert "grad_input(grad_out, values) instead of grad_input(grad_out, values, layout)" in message
    for missing in ("grad_weight", "conv_forward", "conv_grad_input", "conv_grad_weight"):
        assert f"no function {missing}()" in message


# ---------------------------------------------------------------- linear: the three passes


@pytest.mark.parametrize(
    "block_size, grid",
    [
        ((16, 16), (3, 4)),
        ((32, 16), (2, 3)),
        ((16, 32), (3, 2)),
        ((16, 128), (2, 1)),
        ((128, 16), (1, 2)),
    ],
    ids=str,
)
@pytest.mark.parametrize("n", [1, 37])
def test_linear_passes_match_dense(kernels, block_size, grid, n):
    layout, x, values, bias, grad_mask = _case(kernels, block_size, grid, 0.5, n)
    assert_matches_dense(x, values, layout, bias, None, kernels[0])
    assert_matches_dense(x, values, layout, bias, grad_mask, kernels[0])


def test_linear_fp64_matches_dense(kernels):
    layout, x, values, bias, grad_mask = _case(kernels, (16, 16), (2, 3), 0.5, 5, torch.float64)
    assert_matches_dense(x, values, layout, bias, grad_mask, kernels[0])


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_empty_and_full_layouts(kernels, density):
    layout, x, values, bias, grad_mask = _case(kernels, (16, 16), (2, 3), density, 9)
    assert_matches_dense(x, values, layout, bias, grad_mask, kernels[0])


def test_empty_block_rows_columns_and_batch(kernels):
    name, device = kernels
    _require(name, torch.float32, (16, 16))
    mask = torch.tensor([[True, False, False], [False, False, False], [True, False, True]])
    layout = BlockLayout.from_block_mask(mask, 16).to(device)
    values = torch.randn(layout.nnz, 16, 16, device=device, requires_grad=True)
    bias = torch.randn(48, device=device)
    x = torch.randn(5, 48, device=device, requires_grad=True)
    y = sk.block_sparse_linear(x, values, layout, bias, backend=name)
    assert torch.equal(y[:, 16:32], bias[16:32].expand(5, 16))  # an empty block row
    y.sum().backward()
    assert torch.all(x.grad[:, 16:32] == 0)  # an empty block column
    empty = x.detach()[:0].requires_grad_()
    values.grad = None
    y_empty = sk.block_sparse_linear(empty, values, layout, bias, backend=name)
    assert y_empty.shape == (0, 48)
    y_empty.sum().backward()
    assert torch.equal(values.grad, torch.zeros_like(values))


def test_all_blocks_masked_gives_exact_zeros(kernels):
    layout, x, values, bias, _ = _case(kernels, (16, 16), (2, 2), 1.0, 8)
    none_kept = torch.zeros(layout.nnz, dtype=torch.bool, device=x.device)
    values.requires_grad_()
    x.requires_grad_()
    sk.block_sparse_linear(x, values, layout, bias, none_kept, backend=kernels[0]).sum().backward()
    assert torch.equal(values.grad, torch.zeros_like(values))
    assert x.grad.abs().sum() > 0  # the input gradient is never masked


def test_leading_dims_and_non_contiguous_input(kernels):
    name, device = kernels
    _require(name, torch.float32, (16, 16))
    generator = torch.Generator().manual_seed(3)
    layout = BlockLayout.from_block_mask(torch.rand(3, 2, generator=generator) < 0.7, 16)
    values = torch.randn(layout.nnz, 16, 16, generator=generator)
    x = torch.randn(3, 32, 5, generator=generator).transpose(1, 2)  # [3, 5, 32], strided
    bias = torch.randn(48, generator=generator)
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.5
    x, values, bias, grad_mask = (t.to(device) for t in (x, values, bias, grad_mask))
    assert not x.is_contiguous()
    assert_matches_dense(x, values, layout.to(device), bias, grad_mask, name)


# The fixture only selects the backend: the same selection serves every generated example.
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(1, 3),
    cols=st.integers(1, 3),
    density=st.floats(0.0, 1.0),
    n=st.integers(0, 40),
    seed=st.integers(0, 2**16),
)
def test_random_layouts_property(kernels, rows, cols, density, n, seed):
    layout, x, values, bias, grad_mask = _case(
        kernels, (16, 16), (rows, cols), density, n, seed=seed
    )
    assert_matches_dense(x, values, layout, bias, grad_mask, kernels[0], seed)


# ---------------------------------------------------------------- convolution: the three passes


@pytest.mark.parametrize(
    "stride, padding, dilation",
    [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("block", [4, 8, 16, 32])
def test_conv_passes_match_dense(kernels, stride, padding, dilation, block):
    name, device = kernels
    _require(name, torch.float32, (block, block))
    generator = torch.Generator().manual_seed(4 + stride + block)
    # 4x4 and 8x8 blocks at 32 channels: the CPU's zero-padded panels at stride 1 (over 100
    # multiply-adds per packed element)
    cin, cout = 32, max(2 * block, 32)
    layout = BlockLayout.from_block_mask(
        torch.rand(cout // block, 9 * cin // block, generator=generator) < 0.5, block
    ).to(device)
    values = torch.randn(layout.values_shape, generator=generator).to(device)
    x = torch.randn(2, cin, 7, 6, generator=generator).to(device)
    grad_mask = (torch.rand(layout.nnz, generator=generator) < 0.5).to(device)
    geometry = ((3, 3), (stride, stride), (padding, padding), (dilation, dilation))

    values_dense, x_dense = values.clone().requires_grad_(), x.clone().requires_grad_()
    weight = layout.to_dense(values_dense).view(cout, 3, 3, cin).permute(0, 3, 1, 2)
    expected = torch.nn.functional.conv2d(
        x_dense, weight, stride=stride, padding=padding, dilation=dilation
    )
    values.requires_grad_()
    x.requires_grad_()
    actual = sk.block_sparse_conv2d(x, values, layout, *geometry, None, grad_mask, name)
    grad_out = torch.randn(expected.shape, generator=generator).to(device)
    expected.backward(grad_out)
    actual.backward(grad_out)
    tol = tolerances(torch.float32, 9 * cin * x.shape[0] * 42)
    torch.testing.assert_close(actual, expected, **tol)
    torch.testing.assert_close(x.grad, x_dense.grad, **tol)
    masked = values_dense.grad * grad_mask.view(-1, 1, 1)
    torch.testing.assert_close(values.grad, masked, **tol)
    assert torch.all(values.grad[~grad_mask] == 0)  # exactly zero, never computed
