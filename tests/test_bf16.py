"""The CPU bf16 kernels (issue 27): linear passes with bf16 activations, fp32 master values.

Run with the instruction where the CPU has it and with its emulation everywhere (the same
packing and tiling, so every CI machine checks them), against the fp64 reference over the same
bf16-rounded operands.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sparcl_kernels as sk
from sparcl_kernels.backends import cpu
from sparcl_kernels.layout import BlockLayout
from sparcl_kernels.nn import SparseConv2d, SparseLinear
from sparcl_kernels.nn.conv import conv_weight_to_gemm

_KINDS = ["emulated", "native"]


@pytest.fixture(params=_KINDS)
def bf16_kernels(request):
    """Selects the emulated or the instruction's bf16 kernels, then restores the default."""
    if request.param == "native" and cpu.describe()["bf16_dot_instruction"] is None:
        pytest.skip("this CPU has no bf16 dot-product instruction")
    cpu.select_bf16_kernels(request.param)
    yield cpu.bf16_kernels()
    cpu.select_bf16_kernels(None)


def _layout(grid, block, density, seed):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(grid, generator=generator) < density
    return BlockLayout.from_block_mask(mask, block)


def _rounded(t: torch.Tensor) -> torch.Tensor:
    return t.detach().bfloat16().double()


def _check_passes(layout, n, seed, with_bias=True, masked=True):
    generator = torch.Generator().manual_seed(seed)
    m, k = layout.shape
    x = torch.randn(n, k, generator=generator).requires_grad_()
    values = torch.randn(*layout.values_shape, generator=generator).requires_grad_()
    bias = torch.randn(m, generator=generator).requires_grad_() if with_bias else None
    mask = torch.rand(layout.nnz, generator=generator) < 0.5 if masked else None
    grad_out = torch.randn(n, m, generator=generator).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sk.block_sparse_linear(x, values, layout, bias, mask)
    assert y.dtype == torch.bfloat16  # as nn.Linear's under the same region
    y.backward(grad_out)
    assert values.grad.dtype == torch.float32 and x.grad.dtype == torch.float32

    xr, vr = _rounded(x).requires_grad_(), _rounded(values).requires_grad_()
    br = None if bias is None else bias.detach().double().requires_grad_()
    yr = sk.block_sparse_linear(xr, vr, layout, br, mask, backend="reference")
    yr.backward(grad_out.double())
    # Outputs and the input gradient are rounded to bf16 once; the weight gradient is fp32.
    rounded = {"atol": 2e-4 * (k + m) ** 0.5, "rtol": 2**-8}
    torch.testing.assert_close(y.double(), yr.detach(), **rounded)
    torch.testing.assert_close(x.grad.double(), xr.grad, **rounded)
    torch.testing.assert_close(values.grad.double(), vr.grad, atol=2e-5 * (n + 1) ** 0.5, rtol=1e-4)
    if mask is not None:
        assert torch.all(values.grad[~mask] == 0)
    if bias is not None:
        torch.testing.assert_close(bias.grad.double(), br.grad, atol=0.05, rtol=2**-7)


@pytest.mark.parametrize("block", [(4, 4), (8, 8), (16, 16), (32, 32), (16, 32), (32, 8), (12, 4)])
@pytest.mark.parametrize("n", [1, 7, 50])
def test_bf16_passes_match_the_reference(bf16_kernels, block, n):
    _check_passes(_layout((3, 4), block, 0.5, seed=n), n, seed=n)


def test_bf16_passes_on_empty_and_full_layouts_and_an_empty_batch(bf16_kernels):
    for density in (0.0, 1.0):
        _check_passes(_layout((3, 3), (8, 8), density, seed=1), 5, seed=2)
    _check_passes(_layout((2, 2), (8, 8), 0.5, seed=3), 0, seed=4)
    _check_passes(_layout((2, 3), (16, 8), 0.7, seed=5), 9, seed=6, with_bias=False, masked=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    grid=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    block=st.tuples(st.sampled_from([4, 8, 16]), st.sampled_from([4, 8, 16])),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    n=st.integers(0, 33),
    seed=st.integers(0, 2**16),
)
def test_bf16_passes_over_layouts(grid, block, density, n, seed):
    cpu.select_bf16_kernels("emulated")
    try:
        _check_passes(_layout(grid, block, density, seed), n, seed)
    finally:
        cpu.select_bf16_kernels(None)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "block"),
    [(3, 1, 1, 1, (8, 8)), (3, 2, 1, 1, (16, 8)), (1, 1, 0, 1, (8, 16)), (3, 1, 2, 2, (4, 4))],
)
def test_bf16_conv_passes_match_the_reference(
    bf16_kernels, kernel, stride, padding, dilation, block
):
    generator = torch.Generator().manual_seed(kernel + stride + padding)
    cin, cout, taps = 16, 32, kernel * kernel
    mask = torch.rand(cout // block[0], taps * cin // block[1], generator=generator) < 0.6
    layout = BlockLayout.from_block_mask(mask, block)
    x = torch.randn(3, cin, 9, 7, generator=generator).requires_grad_()
    values = torch.randn(*layout.values_shape, generator=generator).requires_grad_()
    bias = torch.randn(cout, generator=generator).requires_grad_()
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.5
    args = ((kernel, kernel), (stride, stride), (padding, padding), (dilation, dilation))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sk.block_sparse_conv2d(x, values, layout, *args, bias, grad_mask, backend="cpu")
    assert y.dtype == torch.bfloat16
    grad_out = torch.randn(y.shape, generator=generator).bfloat16()
    y.backward(grad_out)
    assert values.grad.dtype == torch.float32

    xr, vr = _rounded(x).requires_grad_(), _rounded(values).requires_grad_()
    br = bias.detach().double().requires_grad_()
    yr = sk.block_sparse_conv2d(xr, vr, layout, *args, br, grad_mask, backend="reference")
    yr.backward(grad_out.double())
    reduction = taps * (cin + cout)
    rounded = {"atol": 2e-4 * reduction**0.5, "rtol": 2**-8}
    torch.testing.assert_close(y.double(), yr.detach(), **rounded)
    torch.testing.assert_close(x.grad.double(), xr.grad, **rounded)
    pixels = y.shape[0] * y.shape[2] * y.shape[3]
    torch.testing.assert_close(values.grad.double(), vr.grad, atol=2e-5 * pixels**0.5, rtol=1e-4)
    assert torch.all(values.grad[~grad_mask] == 0)


def test_non_contiguous_inputs_and_leading_dims(bf16_kernels):
    layout = _layout((2, 3), (8, 8), 0.7, seed=7)
    values = torch.randn(*layout.values_shape)
    x = torch.randn(3, layout.shape[1], 5).transpose(1, 2)  # [3, 5, K], not contiguous
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sk.block_sparse_linear(x, values, layout)
    expected = sk.block_sparse_linear(_rounded(x), _rounded(values), layout, backend="reference")
    assert y.shape == (3, 5, layout.shape[0])
    torch.testing.assert_close(y.double(), expected, atol=1e-2, rtol=2**-8)


def test_packed_blocks_round_as_torch_and_pair_both_ways():
    """Both packings hold torch's bf16 rounding of every value (ties to even, infinities,
    NaNs, subnormals) in the pair order the kernels multiply."""
    torch.manual_seed(0)
    values = torch.randn(3, 8, 12)
    ties = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8)])  # halfway cases
    specials = torch.tensor([float("inf"), float("-inf"), float("nan"), 1e-40, -3e-39, 0.0])
    flat = values.view(-1)
    flat[:3], flat[3:9] = ties, specials
    rounded = values.to(torch.bfloat16)
    forward = cpu.packed_bf16_blocks(values, False)
    grad_input = cpu.packed_bf16_blocks(values, True)
    # forward [nnz, bk / 2, bm, 2]: pair (b[i, 2p], b[i, 2p + 1]) at [p, i].
    expected_forward = rounded.view(3, 8, 6, 2).permute(0, 2, 1, 3)
    # input gradient [nnz, bm / 2, bk, 2]: pair (b[2p, i], b[2p + 1, i]) at [p, i].
    expected_grad_input = rounded.view(3, 4, 2, 12).permute(0, 1, 3, 2)
    for packed, expected in ((forward, expected_forward), (grad_input, expected_grad_input)):
        assert packed.dtype == torch.bfloat16
        bits, expected_bits = packed.view(torch.int16), expected.contiguous().view(torch.int16)
        nan = expected.isnan()
        assert torch.equal(bits[~nan], expected_bits[~nan])
        assert packed[nan].isnan().all()


def test_packed_blocks_follow_in_place_steps():
    """The bf16 copy is made once per change of the fp32 master values, never reused stale."""
    cpu.select_bf16_kernels("emulated")
    try:
        torch.manual_seed(0)
        layer = SparseLinear(32, 16, block_size=8, sparsity=0.5)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
        x = torch.randn(6, 32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first = layer(x)
            again = layer(x)
        assert torch.equal(first, again)
        first.float().pow(2).sum().backward()
        optimizer.step()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            after = layer(x)
        expected = sk.block_sparse_linear(
            _rounded(x),
            _rounded(layer.values),
            layer.layout,
            layer.bias.double(),
            backend="reference",
        )
        torch.testing.assert_close(after.double(), expected, atol=1e-2, rtol=2**-8)
        assert not torch.equal(after, first)
    finally:
        cpu.select_bf16_kernels(None)


def test_conv_model_matches_its_dense_twin_under_bf16_autocast(bf16_kernels):
    torch.manual_seed(4)
    sparse = nn.Sequential(
        SparseConv2d(8, 16, 3, padding=1, block_size=8, sparsity=0.5),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 36, 10),
    )
    dense = copy.deepcopy(sparse)
    dense[0] = sparse[0].to_dense()
    x, target = torch.randn(4, 8, 6, 6), torch.randn(4, 10)
    losses = []
    for model in (sparse, dense):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss = nn.functional.mse_loss(out.float(), target)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=3e-2, rtol=3e-2)
    expected = sparse[0].layout.to_blocks(conv_weight_to_gemm(dense[0].weight.grad))
    assert sparse[0].values.grad.dtype == torch.float32
    torch.testing.assert_close(sparse[0].values.grad, expected, atol=3e-2, rtol=3e-2)


def test_model_matches_its_dense_twin_under_bf16_autocast(bf16_kernels):
    torch.manual_seed(3)
    sparse = nn.Sequential(
        SparseLinear(64, 32, block_size=16, sparsity=0.5),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    dense = nn.Sequential(sparse[0].to_dense(), nn.ReLU(), nn.Linear(32, 10))
    dense[2].load_state_dict(sparse[2].state_dict())
    x, target = torch.randn(16, 64), torch.randn(16, 10)
    losses = []
    for model in (sparse, dense):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        loss = nn.functional.mse_loss(out.float(), target)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=2e-2, rtol=2e-2)
    expected = sparse[0].layout.to_blocks(dense[0].weight.grad)
    assert sparse[0].values.grad.dtype == torch.float32
    torch.testing.assert_close(sparse[0].values.grad, expected, atol=3e-2, rtol=3e-2)


def test_without_bf16_kernels_autocast_computes_in_fp32():
    layout = _layout((2, 2), (8, 8), 1.0, seed=8)
    values = torch.randn(*layout.values_shape)
    x = torch.randn(4, 16)
    fits = cpu.takes_bf16_autocast((6, 8))
    assert not fits  # block sides must be multiples of 4
    if cpu.bf16_kernels() is None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = sk.block_sparse_linear(x, values, layout)
        assert y.dtype == torch.float32
        assert cpu.describe()["bf16_kernels"] is None


def test_bf16_selection_and_binding_checks():
    with pytest.raises(ValueError, match="must be one of"):
        cpu.select_bf16_kernels("fast")
    if cpu.describe()["bf16_dot_instruction"] is None:
        with pytest.raises(ValueError, match="no bf16 dot-product instruction"):
            cpu.select_bf16_kernels("native")
    layout = _layout((2, 2), (8, 8), 1.0, seed=9)
    values = torch.randn(*layout.values_shape)
    packed = cpu.packed_bf16_blocks(values, False)
    assert packed.shape == (layout.nnz, 4, 8, 2) and packed.dtype == torch.bfloat16
    from sparcl_kernels import _cpu

    with pytest.raises(RuntimeError, match="bfloat16"):
        _cpu.forward_bf16(torch.randn(3, 16), packed, *layout.tensors(), None)
    with pytest.raises(RuntimeError, match="16 columns"):
        _cpu.forward_bf16(torch.randn(3, 8).bfloat16(), packed, *layout.tensors(), None)
    with pytest.raises(RuntimeError, match="multiples of 4"):
        _cpu.bf16_pack_blocks(torch.randn(2, 6, 8))


def test_compiled_layer_runs_the_same_bf16_kernels():
    """torch.compile traces the custom ops with mixed dtypes (fake fp32 weight gradient)."""
    cpu.select_bf16_kernels("emulated")
    try:
        torch.manual_seed(0)
        layer = SparseLinear(32, 16, block_size=8, sparsity=0.5)
        x = torch.randn(6, 32, requires_grad=True)

        def step(inputs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return layer(inputs)

        results = []
        for fn in (step, torch.compile(step, fullgraph=True)):
            layer.values.grad = None
            y = fn(x)
            y.float().pow(2).sum().backward()
            results.append((y.detach(), layer.values.grad.clone()))
        (y_eager, g_eager), (y_compiled, g_compiled) = results
        assert y_compiled.dtype == torch.bfloat16 and g_compiled.dtype == torch.float32
        torch.testing.assert_close(y_compiled, y_eager)
        torch.testing.assert_close(g_compiled, g_eager)
    finally:
        cpu.select_bf16_kernels(None)
