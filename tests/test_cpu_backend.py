"""The C++ CPU backend: instruction sets, thread counts, uneven work, the native fp64 path."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import assert_matches_dense
from hypothesis import given, settings
from hypothesis import strategies as st

import sparcl_kernels as sk
from sparcl_kernels import BlockLayout
from sparcl_kernels.backends import get_backend

# Kernel tests run once per instruction-set variant of the kernels this CPU can run.
per_isa = pytest.mark.usefixtures("cpu_isa")


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


@per_isa
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


@per_isa
@pytest.mark.parametrize("block", [(8, 8), (16, 8), (4, 4)], ids=str)
@pytest.mark.parametrize("batch", [48, 100])
def test_linear_over_batch_major_panels(threads, block, batch):
    """Blocks under two vectors wide, a batch of at least one panel tile and over 100
    multiply-adds per packed element: the forward and input gradient run on panels."""
    generator = torch.Generator().manual_seed(batch)
    layout = BlockLayout.from_dense(torch.randn(208, 208, generator=generator), block, 0.3)
    x = torch.randn(batch, 208, generator=generator)
    values = torch.randn(layout.values_shape, generator=generator)
    bias = torch.randn(208, generator=generator)
    assert_matches_dense(x, values, layout, bias, None, "cpu")


@per_isa
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


@per_isa
def test_linear_forward_and_input_gradient_over_several_bands(threads):
    """Stored blocks beyond one band (512 KB: 128 blocks of 32x32) and a batch of several
    chunks: the forward and input gradient run band by band, chunk-major within a band; each
    output element is still reduced by one tile in a fixed order (bitwise across threads)."""
    generator = torch.Generator().manual_seed(6)
    layout = BlockLayout.from_dense(torch.randn(1024, 768), (32, 32), 0.4)
    assert layout.nnz * 32 * 32 > 2 * 128 * 1024  # at least three bands
    x = torch.randn(301, 768, generator=generator)
    grad_out = torch.randn(301, 1024, generator=generator)
    values = torch.randn(layout.values_shape, generator=generator)
    backend = get_backend("cpu")
    y, dx = backend.forward(x, values, layout, None), backend.grad_input(grad_out, values, layout)
    weight = layout.to_dense(values).double()
    torch.testing.assert_close(y.double(), x.double() @ weight.t(), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dx.double(), grad_out.double() @ weight, rtol=1e-4, atol=1e-3)
    torch.set_num_threads(3 - threads)
    assert torch.equal(backend.forward(x, values, layout, None), y)
    assert torch.equal(backend.grad_input(grad_out, values, layout), dx)


@per_isa
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("features, rows", [(256, 900), (1024, 500)])
def test_linear_weight_gradient_over_batch_chunks(threads, masked, features, rows):
    """A batch longer than one chunk of the weight gradient (each thread packs the operand
    panels its blocks read in chunks of 512 KiB, up to 2 MiB where its blocks' gradients
    are larger: 1024 x 1024 at 0.7, unmasked): every chunk is added in order, bitwise across
    thread counts, and equals the fp64 dense gradient."""
    generator = torch.Generator().manual_seed(5)
    layout = BlockLayout.from_dense(torch.randn(features, features), (32, 32), 0.7)
    x = torch.randn(rows, features, generator=generator)
    grad_out = torch.randn(rows, features, generator=generator)
    mask = torch.rand(layout.nnz, generator=generator) < 0.5 if masked else None
    backend = get_backend("cpu")
    ours = backend.grad_weight(grad_out, x, layout, mask)
    expected = layout.to_blocks(grad_out.double().t() @ x.double())
    if mask is not None:
        expected[~mask] = 0
        assert torch.all(ours[~mask] == 0)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-4, atol=1e-3)
    torch.set_num_threads(3 - threads)
    assert torch.equal(backend.grad_weight(grad_out, x, layout, mask), ours)


@per_isa
@pytest.mark.parametrize(
    "batch, size, stride, active",
    [(3, 39, 1, 3), (5, 60, 2, 1), (2, 48, 1, 0), (1, 70, 1, 40)],
    ids=["3-blocks", "1-block-stride2", "all-masked", "40-blocks"],
)
def test_conv_weight_gradient_over_pixel_segments(threads, batch, size, stride, active):
    """Beyond 4096 output pixels the conv weight gradient sums per-segment partials (so that
    a few active blocks still use every thread): it matches the dense gradient, is exactly
    zero where masked, and does not depend on the thread count."""
    generator = torch.Generator().manual_seed(batch + size)
    mask = torch.zeros(2, 9 * 4, dtype=torch.bool)
    mask.view(-1)[torch.randperm(mask.numel(), generator=generator)[:40]] = True
    layout = BlockLayout.from_block_mask(mask, 16)
    grad_mask = torch.zeros(layout.nnz, dtype=torch.bool)
    grad_mask[torch.randperm(layout.nnz, generator=generator)[:active]] = True
    x = torch.randn(batch, 64, size, size, generator=generator).requires_grad_()
    values = torch.randn(layout.values_shape, generator=generator).requires_grad_()
    geometry = ((3, 3), (stride, stride), (1, 1))
    y = sk.block_sparse_conv2d(x, values, layout, *geometry, grad_block_mask=grad_mask)
    assert y.shape[0] * y.shape[2] * y.shape[3] > 4096
    grad_out = torch.randn(y.shape, generator=generator)
    (grad_values,) = torch.autograd.grad(y, values, grad_out)
    weight = layout.to_dense(values.detach().double()).view(32, 3, 3, 64).permute(0, 3, 1, 2)
    weight.requires_grad_()
    dense = torch.nn.functional.conv2d(x.detach().double(), weight, stride=stride, padding=1)
    dense.backward(grad_out.double())
    expected = layout.to_blocks(weight.grad.permute(0, 2, 3, 1).reshape(32, -1))
    expected = expected.float() * grad_mask.view(-1, 1, 1)
    torch.testing.assert_close(grad_values, expected, rtol=1e-4, atol=1e-3)
    assert torch.all(grad_values[~grad_mask] == 0)
    torch.set_num_threads(3 - threads)
    y_other = sk.block_sparse_conv2d(x, values, layout, *geometry, grad_block_mask=grad_mask)
    (grad_other,) = torch.autograd.grad(y_other, values, grad_out)
    assert torch.equal(grad_values, grad_other)


def check_square_conv_against_dense(x, layout, mask, generator, threads):
    """A 3x3 pad-1 block-sparse conv with as many output as input channels: its output and
    both gradients match fp64 dense, masked blocks get exactly zero, and all three are
    bitwise the same on the other thread count."""
    channels = x.shape[1]
    values = torch.randn(layout.values_shape, generator=generator).requires_grad_()
    geometry = ((3, 3), (1, 1), (1, 1))
    y = sk.block_sparse_conv2d(x, values, layout, *geometry, grad_block_mask=mask)
    grad_out = torch.randn(y.shape, generator=generator)
    grad_x, grad_values = torch.autograd.grad(y, (x, values), grad_out)
    weight = layout.to_dense(values.detach().double()).view(channels, 3, 3, channels)
    weight = weight.permute(0, 3, 1, 2).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    dense = torch.nn.functional.conv2d(x64, weight, padding=1)
    dense.backward(grad_out.double())
    torch.testing.assert_close(y.double(), dense, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(grad_x.double(), x64.grad, rtol=1e-4, atol=1e-3)
    expected = layout.to_blocks(weight.grad.permute(0, 2, 3, 1).reshape(channels, -1))
    if mask is not None:
        expected[~mask] = 0
        assert torch.all(grad_values[~mask] == 0)
    torch.testing.assert_close(grad_values.double(), expected, rtol=1e-4, atol=1e-3)
    torch.set_num_threads(3 - threads)
    y_other = sk.block_sparse_conv2d(x, values, layout, *geometry, grad_block_mask=mask)
    grad_other = torch.autograd.grad(y_other, (x, values), grad_out)
    assert torch.equal(y_other, y)
    assert torch.equal(grad_other[0], grad_x) and torch.equal(grad_other[1], grad_values)


@per_isa
@pytest.mark.parametrize("masked", [False, True])
def test_conv_over_chunked_panels(threads, masked):
    """Blocks narrower than a vector of a stride-1 conv: the three passes pack chunks of
    padded-grid rows that fit in L2. 512 + 512 channels leave 7 rows of 8 per forward or
    input-gradient chunk (14 chunks over the batch's 96 rows) and 11 per weight-gradient
    chunk, whose 8 segments of 12 rows then add a second chunk to their partials."""
    generator = torch.Generator().manual_seed(11)
    layout = BlockLayout.from_dense(torch.randn(512, 9 * 512, generator=generator), 8, 0.95)
    mask = torch.rand(layout.nnz, generator=generator) < 0.5 if masked else None
    x = torch.randn(12, 512, 6, 6, generator=generator).requires_grad_()
    check_square_conv_against_dense(x, layout, mask, generator, threads)


@per_isa
@pytest.mark.parametrize("block", [8, 16, 32])
@pytest.mark.parametrize("masked", [False, True])
def test_conv_weight_gradient_over_pixel_slices(threads, block, masked):
    """Under 4096 output pixels the weight gradient's gathered rows walk the pixels in slices
    that fit in L2, every block (or run of one-vector-wide blocks) over one slice before the
    next: 256 + 256 channels make 256-pixel slices, so the batch's 384 pixels take two and
    the second adds to the first."""
    generator = torch.Generator().manual_seed(block + masked)
    layout = BlockLayout.from_dense(torch.randn(256, 9 * 256, generator=generator), block, 0.9)
    mask = torch.rand(layout.nnz, generator=generator) < 0.5 if masked else None
    x = torch.randn(6, 256, 8, 8, generator=generator).requires_grad_()
    check_square_conv_against_dense(x, layout, mask, generator, threads)


@per_isa
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


@pytest.mark.parametrize("block", [8, 16])
def test_conv_weight_gradient_over_many_pixels_and_blocks_matches_the_reference(block):
    # 12544 output pixels (four 4096-pixel segments) and about 20 kept blocks: the item cap
    # allows three segments, which must still cover every pixel (they once covered 3 x 4096,
    # dropping the batch's last image from the weight gradient).
    generator = torch.Generator().manual_seed(0)
    layout = BlockLayout.from_dense(torch.randn(16, 9 * 16, generator=generator), block, 0.4)
    x = torch.randn(49, 16, 16, 16, generator=generator).to(memory_format=torch.channels_last)
    grad_out = torch.randn(49, 16, 16, 16, generator=generator)
    grad_out = grad_out.permute(0, 2, 3, 1).contiguous()  # [N, OH, OW, C], as the op passes it
    geometry = sk.geometry.ConvGeometry.of((3, 3), padding=(1, 1))
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()
    ours = get_backend("cpu").conv_grad_weight(grad_out, x_nhwc, layout, None, geometry)
    ref = get_backend("reference").conv_grad_weight(grad_out, x_nhwc, layout, None, geometry)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-3)


def test_native_binding_checks_direct_calls():
    from sparcl_kernels import _cpu

    layout = BlockLayout.from_dense(torch.randn(16, 16), 8, 0.5)
    values = torch.randn(layout.values_shape)
    with pytest.raises(RuntimeError, match="x must be a contiguous 2-D"):
        _cpu.forward(torch.randn(4, 16).t(), values, *layout.tensors(), None, None)


# ---------------------------------------------------------------- instruction sets


def test_backend_info_names_the_instruction_set_in_use(cpu_isa):
    info = sk.backend_info()["backends"]["cpu"]
    assert info["isa"] in info["supported_isas"]
    assert set(info["supported_isas"]) <= set(info["compiled_isas"])
    expected_width = {"baseline": 4, "neon": 4, "avx2": 8, "avx512": 16}[info["isa"]]
    assert info["vector_width"] == (16 if cpu_isa == "wide16" else expected_width)
    if cpu_isa != "wide16":
        assert info["isa"] == cpu_isa


_PRINT_CPU_INFO = (
    "import json, sparcl_kernels as sk; print(json.dumps(sk.backend_info()['backends']['cpu']))"
)


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def _cpu_info_with(isa: str) -> dict:
    """backend_info()["backends"]["cpu"] of a fresh process with $SPARCL_CPU_ISA=isa."""
    result = _run_python(_PRINT_CPU_INFO, SPARCL_CPU_ISA=isa)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_default_is_the_widest_instruction_set_the_cpu_runs():
    info = _cpu_info_with("")
    assert info["isa"] == info["supported_isas"][-1]
    assert info["forced_isa"] is None


@pytest.mark.parametrize("value", ["turbo", "avx512", "neon"])
def test_forcing_an_instruction_set_that_cannot_run_names_the_variable(value):
    from sparcl_kernels.backends import cpu

    if value in cpu.describe()["supported_isas"]:
        pytest.skip(f"this CPU runs {value}")
    result = _run_python("import sparcl_kernels as sk; sk.backend_info()", SPARCL_CPU_ISA=value)
    assert result.returncode != 0
    assert "$SPARCL_CPU_ISA" in result.stderr and value in result.stderr


def test_forced_instruction_set_is_used_and_reported():
    info = _cpu_info_with("baseline")
    assert (info["isa"], info["forced_isa"], info["vector_width"]) == ("baseline", "baseline", 4)


def test_bad_vector_width_is_rejected():
    from sparcl_kernels.backends import cpu

    with pytest.raises(ValueError, match="vector width must be 4, 8 or 16"):
        cpu.select_isa(None, 32)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 dispatch only")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_wide_instructions_only_inside_their_instruction_sets_kernels():
    """Every function that uses AVX/AVX-512 instructions belongs to the avx2 or avx512 copy of
    the kernels or to the AVX512_BF16 probe, which run only where the CPU has them: nothing
    shared (inline functions, template instantiations, the binding) can bring an instruction a
    baseline CPU lacks."""
    from sparcl_kernels import _cpu

    listing = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", _cpu.__file__],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    offenders, isa_functions = [], 0
    for function in re.split(r"\n(?=[0-9a-f]+ <)", listing):
        header = re.match(r"[0-9a-f]+ <(.*)>:", function)
        if not header:
            continue
        name = header.group(1)
        wide = re.search(r"^\s+[0-9a-f]+:\s+v[a-z0-9]+\s", function, re.M) or re.search(
            r"%[yz]mm", function
        )
        # objdump leaves names it cannot demangle (deeply nested lambda templates) mangled
        in_isa_copy = any(f"sparcl::{isa}::" in name for isa in ("avx2", "avx512", "avx512bf16"))
        if in_isa_copy or re.match(r"_Z+N6sparcl(4avx2|6avx512|10avx512bf16)", name):
            isa_functions += bool(wide)
        elif wide:
            offenders.append(name)
    assert isa_functions > 0, "no AVX code found: are the avx2/avx512 kernels compiled?"
    assert not offenders, offenders[:10]


def test_bf16_dot_peak_is_measured_only_where_the_cpu_has_the_instruction():
    cpu = get_backend("cpu")
    instruction = cpu.describe()["bf16_dot_instruction"]
    assert instruction in (None, "avx512bf16", "bfdot")
    if instruction is None:
        with pytest.raises(RuntimeError, match="no bf16 dot-product instruction"):
            cpu.bf16_dot_peak(1, 0.01)
    else:
        assert cpu.bf16_dot_peak(1, 0.01) > 0
    if instruction is not None:
        with pytest.raises(ValueError, match="threads must be >= 1"):
            cpu.bf16_dot_peak(0, 0.01)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        cpu.fma_peak(0, 0.01)
