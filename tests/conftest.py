"""Shared helpers: the dense masked oracle and the backends under test."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

# Without a GPU, the Triton kernels run in Triton's interpreter on CPU tensors. The switch is
# read when the kernels are decorated, so it must be set before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sparcl_kernels as sk

# Backends every CPU test runs against. "cpu" is listed whenever the package ships its source:
# a missing extension must fail the suite, not skip it.
CPU_BACKENDS = ["reference", "cpu"]

# The CPU kernels' instruction-set variants: (test id, SPARCL_CPU_ISA value, vector width).
# "wide16" runs the AVX-512 tiling (16-float vectors, split by the compiler) on the best
# instruction set this CPU has, so its tile shapes and edges are tested on any machine.
CPU_ISA_VARIANTS = [
    ("baseline", "baseline", 0),
    ("avx2", "avx2", 0),
    ("avx512", "avx512", 0),
    ("neon", "neon", 0),
    ("wide16", None, 16),
]


def select_cpu_isa(name: str | None, width: int) -> None:
    """Use a CPU-kernel variant, skipping the test where this build or CPU cannot run it."""
    from sparcl_kernels.backends import cpu

    info = cpu.describe()
    if name is not None and name not in info["compiled_isas"]:
        pytest.skip(f"{name} is not compiled for this architecture ({info['compiled_isas']})")
    if name is not None and name not in info["supported_isas"]:
        pytest.skip(f"this CPU cannot run {name} (it supports {info['supported_isas']})")
    cpu.select_isa(name, width)


@pytest.fixture(params=CPU_ISA_VARIANTS, ids=[variant[0] for variant in CPU_ISA_VARIANTS])
def cpu_isa(request):
    """Runs the test once per CPU-kernel variant, then restores the default choice."""
    from sparcl_kernels.backends import cpu

    _, name, width = request.param
    select_cpu_isa(name, width)
    yield request.param[0]
    cpu.select_isa(os.environ.get(cpu.ISA_ENV_VAR) or None)


# The backend fixture's variants: the reference, and the cpu backend per instruction set.
BACKEND_VARIANTS = [("reference", None)] + [(f"cpu-{v[0]}", v) for v in CPU_ISA_VARIANTS]


def random_block_mask(
    grid: tuple[int, int], density: float, generator: torch.Generator
) -> torch.Tensor:
    return torch.rand(grid, generator=generator) < density


def dense_masked_grads(x, values, layout, bias, grad_block_mask, grad_out):
    """Output and gradients of a dense layer whose weight is zero outside the stored blocks.

    The weight gradient is the dense gradient restricted to stored blocks (``to_dense`` is
    differentiable) and multiplied by the gradient mask.
    """
    x = x.detach().clone().requires_grad_()
    values = values.detach().clone().requires_grad_()
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    weight = layout.to_dense(values)
    y = torch.nn.functional.linear(x, weight, bias)
    y.backward(grad_out)
    grad_values = values.grad
    if grad_block_mask is not None:
        grad_values = grad_values * grad_block_mask.view(-1, 1, 1)
    return y.detach(), x.grad, grad_values, None if bias is None else bias.grad


def op_grads(x, values, layout, bias, grad_block_mask, grad_out, backend):
    """Output and gradients of ``block_sparse_linear`` on the given backend."""
    x = x.detach().clone().requires_grad_()
    values = values.detach().clone().requires_grad_()
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    y = sk.block_sparse_linear(x, values, layout, bias, grad_block_mask, backend=backend)
    y.backward(grad_out)
    return y.detach(), x.grad, values.grad, None if bias is None else bias.grad


def tolerances(dtype: torch.dtype, reduction: int) -> dict[str, float]:
    """Absolute/relative tolerance for a sum of ``reduction`` products of O(1) numbers."""
    if dtype == torch.float64:
        return {"atol": 1e-10 * reduction**0.5, "rtol": 1e-10}
    return {"atol": 2e-5 * reduction**0.5, "rtol": 1e-4}


def assert_matches_dense(x, values, layout, bias, grad_block_mask, backend, seed=0):
    generator = torch.Generator().manual_seed(seed)
    m = layout.shape[0]
    grad_out = torch.randn(*x.shape[:-1], m, generator=generator, dtype=x.dtype)
    expected = dense_masked_grads(x, values, layout, bias, grad_block_mask, grad_out)
    actual = op_grads(x, values, layout, bias, grad_block_mask, grad_out, backend)
    reduction = max(layout.shape[1], x.numel() // max(layout.shape[1], 1), 1)
    names = ("y", "grad_x", "grad_values", "grad_bias")
    for name, a, e in zip(names, actual, expected, strict=True):
        if e is None:
            assert a is None, name
            continue
        assert a.shape == e.shape, name
        torch.testing.assert_close(
            a, e, **tolerances(x.dtype, reduction), msg=lambda m, name=name: f"{name}: {m}"
        )
    if grad_block_mask is not None:
        # Switched-off blocks must be exactly zero, not merely small.
        assert torch.all(actual[2][~grad_block_mask] == 0)


@pytest.fixture(params=BACKEND_VARIANTS, ids=[variant[0] for variant in BACKEND_VARIANTS])
def backend(request):
    """A CPU backend name; the cpu backend once per instruction-set variant."""
    _, variant = request.param
    if variant is None:
        yield "reference"
        return
    from sparcl_kernels.backends import cpu

    select_cpu_isa(variant[1], variant[2])
    yield "cpu"
    cpu.select_isa(os.environ.get(cpu.ISA_ENV_VAR) or None)


def load_bench_module(name: str) -> ModuleType:
    """bench/<name>.py as a module, its sibling modules importable as when run as a script."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module
