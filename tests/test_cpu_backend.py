"""The C++ CPU backend: thread counts, uneven work, the native fp64 path, visibility."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_matches_dense
from hypothesis import given, settings
from hypothesis import strategies as st

import sparcl_kernels as sk
from sparcl_kernels import BlockLayout


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def threads(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def test_extension_is_built_and_default_on_cpu(monkeypatch):
    monkeypatch.delenv("SPARCL_BACKEND", raising=False)
    info = sk.backend_info()
    assert info["backends"]["cpu"]["available"], info["backends"]["cpu"]
    assert info["default"]["cpu"] == "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("batch", [1, 5, 47, 48, 49, 130])
def test_uneven_rows_split_across_threads(threads, dtype, batch):
    """One full block row among empty ones, batches straddling the 48-row work chunks."""
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[2] = True
    mask[5, 3] = True
    mask[:, 7] = True  # and a full block column for the input-gradient partition
    layout = BlockLayout.from_block_mask(mask, (16, 8))
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 64, generator=generator, dtype=dtype)
    values = torch.randn(layout.values_shape, generator=generator, dtype=dtype)
    bias = torch.randn(96, generator=generator, dtype=dtype)
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.3
    assert_matches_dense(x, values, layout, bias, None, "cpu")
    assert_matches_dense(x, values, layout, bias, grad_mask, "cpu")


def test_thread_count_does_not_change_results(threads):
    layout = BlockLayout.from_dense(torch.randn(256, 192), (32, 16), 0.7)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(100, 192, generator=generator)
    values = torch.randn(layout.values_shape, generator=generator)
    y = sk.block_sparse_linear(x, values, layout, backend="cpu")
    torch.set_num_threads(3 - threads)
    y_other = sk.block_sparse_linear(x, values, layout, backend="cpu")
    # Each output element is reduced by one thread in a fixed order: bitwise identical.
    assert torch.equal(y, y_other)


@settings(max_examples=40, deadline=None)
@given(
    bm=st.sampled_from([1, 3, 8, 16, 24, 32]),
    bk=st.sampled_from([1, 5, 8, 16, 40]),
    rows=st.integers(1, 5),
    cols=st.integers(1, 5),
    density=st.floats(0.0, 1.0),
    batch=st.integers(1, 60),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_property_cpu_backend(bm, bk, rows, cols, density, batch, seed, dtype):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=generator) < density
    layout = BlockLayout.from_block_mask(mask, (bm, bk))
    x = torch.randn(batch, layout.shape[1], generator=generator, dtype=dtype)
    values = torch.randn(layout.values_shape, generator=generator, dtype=dtype)
    bias = torch.randn(layout.shape[0], generator=generator, dtype=dtype)
    grad_mask = torch.rand(layout.nnz, generator=generator) < 0.5
    assert_matches_dense(x, values, layout, bias, grad_mask, "cpu", seed)


def test_cpu_backend_rejects_low_precision():
    layout = BlockLayout.from_dense(torch.randn(16, 16), 8, 0.5)
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    values = torch.randn(layout.values_shape, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="backend 'cpu' supports dtypes"):
        sk.block_sparse_linear(x, values, layout, backend="cpu")


def test_native_binding_checks_direct_calls():
    from sparcl_kernels import _cpu

    layout = BlockLayout.from_dense(torch.randn(16, 16), 8, 0.5)
    values = torch.randn(layout.values_shape)
    with pytest.raises(RuntimeError, match="x must be a contiguous 2-D"):
        _cpu.forward(torch.randn(4, 16).t(), values, *layout.tensors(), None)
