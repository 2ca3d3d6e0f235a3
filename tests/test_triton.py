"""The Triton backend against the reference: in Triton's interpreter on CPU tensors here,
on the GPU where one exists (tests marked ``gpu``, run with ``pytest -m gpu``).

The interpreter executes each program in numpy, so shapes stay small to keep CI fast.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import sparcl_kernels as sk
from sparcl_kernels.backends import get_backend, reference
from sparcl_kernels.layout import BlockLayout

triton_backend = get_backend("triton")  # must load: triton is a declared dependency
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_backend.INTERPRETED:
    pytest.skip("no GPU and TRITON_INTERPRET was not set before import", allow_module_level=True)


def _case(block_size, grid, density, n, dtype=torch.float32, seed=0, device=DEVICE):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(grid, generator=generator) < density
    layout = BlockLayout.from_block_mask(mask, block_size).to(device)
    m, k = layout.shape
    values = torch.randn(layout.nnz, *block_size, generator=generator).to(device, dtype)
    x = torch.randn(n, k, generator=generator).to(device, dtype)
    grad_out = torch.randn(n, m, generator=generator).to(device, dtype)
    bias = torch.randn(m, generator=generator).to(device, dtype)
    grad_mask = (torch.rand(layout.nnz, generator=generator) < 0.5).to(device)
    return layout, values, x, grad_out, bias, grad_mask


def _tolerance(dtype: torch.dtype, reduction: int) -> dict[str, float]:
    if dtype == torch.float32:
        # TF32 only where torch's matmul would use it; the interpreter multiplies in fp32.
        loose = torch.backends.cuda.matmul.allow_tf32 and DEVICE == "cuda"
        return {"atol": (2e-2 if loose else 2e-5) * reduction**0.5, "rtol": 1e-3}
    eps = torch.finfo(dtype).eps
    return {"atol": 4 * eps * reduction**0.5, "rtol": 4 * eps}


def _assert_passes_match(block_size, grid, density, n, dtype=torch.float32, seed=0):
    layout, values, x, grad_out, bias, grad_mask = _case(block_size, grid, density, n, dtype, seed)
    up = [t.float() for t in (values, x, grad_out, bias)]
    f_values, f_x, f_grad_out, f_bias = up
    checks = {
        "forward": (
            triton_backend.forward(x, values, layout, bias),
            reference.forward(f_x, f_values, layout, f_bias),
            layout.shape[1],
        ),
        "grad_input": (
            triton_backend.grad_input(grad_out, values, layout),
            reference.grad_input(f_grad_out, f_values, layout),
            layout.shape[0],
        ),
        "grad_weight": (
            triton_backend.grad_weight(grad_out, x, layout, None),
            reference.grad_weight(f_grad_out, f_x, layout, None),
            max(n, 1),
        ),
        "masked grad_weight": (
            triton_backend.grad_weight(grad_out, x, layout, grad_mask),
            reference.grad_weight(f_grad_out, f_x, layout, grad_mask),
            max(n, 1),
        ),
    }
    for name, (ours, expected, reduction) in checks.items():
        assert ours.dtype == dtype, name
        torch.testing.assert_close(
            ours.float(),
            expected,
            **_tolerance(dtype, reduction),
            msg=lambda m, n=name: f"{n}: {m}",
        )
    masked = triton_backend.grad_weight(grad_out, x, layout, grad_mask)
    assert torch.all(masked[~grad_mask] == 0)  # exactly zero, never computed


# ---------------------------------------------------------------- kernels vs reference
# fp32 passes, empty/full layouts, empty batches, masks, strides and convolutions: see
# test_conformance.py, which runs them on every backend.


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_fp32(dtype):
    _assert_passes_match((16, 32), (3, 2), 0.6, 21, dtype)


# ---------------------------------------------------------------- convolution: implicit GEMM


@pytest.mark.parametrize(
    "stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1), (2, 1, 2)]
)
@pytest.mark.parametrize("block", [16, 32])
def test_conv_passes_gather_patches_without_unfold_or_fold(
    monkeypatch, stride, padding, dilation, block
):
    generator = torch.Generator().manual_seed(stride + block)
    cin, cout = 32, 2 * block
    mask = torch.rand(cout // block, 9 * cin // block, generator=generator) < 0.5
    layout = BlockLayout.from_block_mask(mask, block).to(DEVICE)
    values = torch.randn(layout.values_shape, generator=generator).to(DEVICE)
    x = torch.randn(2, cin, 7, 6, generator=generator).to(DEVICE)
    grad_mask = (torch.rand(layout.nnz, generator=generator) < 0.5).to(DEVICE)
    values_dense, x_dense = values.clone().requires_grad_(), x.clone().requires_grad_()
    weight = layout.to_dense(values_dense).view(cout, 3, 3, cin).permute(0, 3, 1, 2)
    expected = torch.nn.functional.conv2d(
        x_dense, weight, stride=stride, padding=padding, dilation=dilation
    )
    grad_out = torch.randn(expected.shape, generator=generator).to(DEVICE)
    expected.backward(grad_out)

    def unavailable(*args, **kwargs):
        raise AssertionError("the Triton conv built a patch matrix")

    monkeypatch.setattr(torch.nn.functional, "unfold", unavailable)
    monkeypatch.setattr(torch.nn.functional, "fold", unavailable)
    values.requires_grad_()
    x.requires_grad_()
    geometry = ((3, 3), (stride, stride), (padding, padding), (dilation, dilation))
    actual = sk.block_sparse_conv2d(x, values, layout, *geometry, None, grad_mask, "triton")
    actual.backward(grad_out)
    tolerance = _tolerance(torch.float32, 9 * cin * 2 * 42)
    torch.testing.assert_close(actual, expected, **tolerance)
    torch.testing.assert_close(x.grad, x_dense.grad, **tolerance)
    torch.testing.assert_close(
        values.grad, values_dense.grad * grad_mask.view(-1, 1, 1), **tolerance
    )
    assert torch.all(values.grad[~grad_mask] == 0)


# ---------------------------------------------------------------- weight gradient: split-N


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n", [0, 31, 150])
def test_split_weight_gradient_equals_the_unsplit_one_bit_for_bit(masked, n):
    layout, _, x, grad_out, _, grad_mask = _case((32, 16), (3, 2), 0.7, n)
    mask = grad_mask if masked else None
    meta = {"TILE_M": 32, "TILE_K": 16, "BLOCK_N": 16, "SEGMENT": 32}
    meta |= {"num_warps": 4, "num_stages": 1}
    whole = triton_backend.grad_weight(grad_out, x, layout, mask, {**meta, "SPLIT": False})
    split = triton_backend.grad_weight(grad_out, x, layout, mask, {**meta, "SPLIT": True})
    assert torch.equal(whole, split)
    expected = reference.grad_weight(grad_out.float(), x.float(), layout, mask)
    torch.testing.assert_close(whole, expected, **_tolerance(torch.float32, max(n, 1)))
    if masked:
        assert torch.all(split[~grad_mask] == 0)


def test_masked_weight_gradient_needs_no_host_synchronisation(monkeypatch):
    """The grid does not depend on the mask: nothing reads it back to the host."""
    layout, _, x, grad_out, _, grad_mask = _case((16, 16), (2, 3), 0.6, 40)

    def no_sync(*args, **kwargs):
        raise AssertionError("the weight gradient listed active blocks on the host")

    monkeypatch.setattr(torch.Tensor, "nonzero", no_sync)
    monkeypatch.setattr(torch.Tensor, "tolist", no_sync)
    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    result = triton_backend.grad_weight(grad_out, x, layout, grad_mask)
    monkeypatch.undo()
    expected = reference.grad_weight(grad_out, x, layout, grad_mask)
    torch.testing.assert_close(result, expected, **_tolerance(torch.float32, 40))


def test_pipeline_stages_fit_the_devices_shared_memory():
    options = {"num_warps": 8, "num_stages": 3}
    tile_bytes = (64 + 128) * 64 * 4  # BLOCK_N 64 + 128-wide block, CHUNK 64, fp32: 48 KiB
    assert triton_backend.fit_stages(options, tile_bytes, 100 * 1024)["num_stages"] == 2
    assert triton_backend.fit_stages(options, tile_bytes, 227 * 1024)["num_stages"] == 3
    assert triton_backend.fit_stages(options, tile_bytes, 16 * 1024)["num_stages"] == 1
    assert triton_backend.fit_stages(options, tile_bytes, None) == options


# ---------------------------------------------------------------- launcher behaviour


def test_grids_beyond_the_program_limit_are_split(monkeypatch):
    monkeypatch.setattr(triton_backend, "MAX_PROGRAMS", 3)
    _assert_passes_match((16, 16), (3, 2), 0.8, 40)


def test_tuned_table_overrides_shipped_meta_parameters(tmp_path, monkeypatch):
    from sparcl_kernels.backends.triton import tuning

    key = tuning.table_key("forward", (16, 16), torch.float32, 37)
    table = {key: {"BLOCK_N": 16, "CHUNK": 16, "GROUP": 1, "num_warps": 2, "num_stages": 2}}
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(tuning.TUNING_ENV_VAR, str(path))
    assert tuning.meta_parameters("forward", (16, 16), torch.float32, 37)["BLOCK_N"] == 16
    assert tuning.meta_parameters("forward", (16, 16), torch.float32, 4096)["BLOCK_N"] == 64
    assert sk.backend_info()["backends"]["triton"]["meta_parameters"] == str(path)
    _assert_passes_match((16, 16), (3, 4), 0.5, 37)
    monkeypatch.setenv(tuning.TUNING_ENV_VAR, str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match="SPARCL_TRITON_TUNING"):
        tuning.meta_parameters("forward", (16, 16), torch.float32, 37)


def test_block_sizes_the_kernels_do_not_take_fall_back_with_one_warning():
    layout, values, x, _, bias, _ = _case((8, 8), (2, 2), 0.5, 6)
    x.requires_grad_(True)
    with pytest.warns(RuntimeWarning, match=r"block size \(8, 8\)"):
        y = sk.block_sparse_linear(x, values, layout, bias, backend="triton")
    torch.testing.assert_close(y, reference.forward(x.detach(), values, layout, bias))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        sk.block_sparse_linear(x, values, layout, bias, backend="triton").sum().backward()
    with pytest.raises(ValueError, match="triton kernels take block sides"):
        triton_backend.forward(x.detach(), values, layout, bias)  # the kernels never see them


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"x": torch.zeros(4, 33)}, ValueError, "x must have shape"),
        ({"x": torch.zeros(4, 32, dtype=torch.float16)}, TypeError, "x is torch.float16"),
        ({"bias": torch.zeros(5)}, ValueError, "bias must have shape"),
        ({"values": torch.zeros(1, 16, 16)}, ValueError, "values must have shape"),
    ],
)
def test_launcher_names_the_bad_argument(change, error, message):
    layout, values, x, _, bias, _ = _case((16, 16), (2, 2), 1.0, 4)
    arguments = {"x": x, "values": values, "bias": bias} | {
        name: tensor.to(DEVICE) for name, tensor in change.items()
    }
    with pytest.raises(error, match=message):
        triton_backend.forward(arguments["x"], arguments["values"], layout, arguments["bias"])


def test_backend_info_reports_triton():
    info = sk.backend_info()["backends"]["triton"]
    assert info["available"] and "triton" in info


# ---------------------------------------------------------------- GPU sweep


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [(16, 16), (32, 32), (64, 64), (128, 128), (32, 128)])
@pytest.mark.parametrize("n", [1, 257, 4096])
def test_gpu_sweep_matches_reference(dtype, block_size, n):
    _assert_passes_match(block_size, (8, 6), 0.3, n, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_kernels_launch_on_the_tensors_device_not_the_current_one():
    layout, values, x, grad_out, bias, grad_mask = _case((32, 32), (3, 2), 0.5, 64)
    moved = [t.to("cuda:1") for t in (values, x, grad_out, bias, grad_mask)]
    values, x, grad_out, bias, grad_mask = moved
    layout = layout.to("cuda:1")
    with torch.cuda.device(0):
        y = triton_backend.forward(x, values, layout, bias)
        grad_values = triton_backend.grad_weight(grad_out, x, layout, grad_mask)
    torch.testing.assert_close(
        y.cpu(),
        reference.forward(x.cpu(), values.cpu(), layout.to("cpu"), bias.cpu()),
        **_tolerance(torch.float32, 64),
    )
    expected = reference.grad_weight(grad_out.cpu(), x.cpu(), layout.to("cpu"), grad_mask.cpu())
    torch.testing.assert_close(grad_values.cpu(), expected, **_tolerance(torch.float32, 64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend_name", ["triton", "cuda"])
def test_masked_training_step_is_captured_by_a_cuda_graph(backend_name):
    """No host synchronisation in forward or backward: the step replays from a CUDA graph."""
    layout, values, x, grad_out, bias, grad_mask = _case((32, 32), (4, 3), 0.5, 256)
    values.requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles the kernels) off the default stream
        for _ in range(2):
            values.grad = None
            y = sk.block_sparse_linear(x, values, layout, bias, grad_mask, backend=backend_name)
            y.backward(grad_out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    values.grad = None
    with torch.cuda.graph(graph):
        y = sk.block_sparse_linear(x, values, layout, bias, grad_mask, backend=backend_name)
        y.backward(grad_out)
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.grad_weight(grad_out, x, layout, grad_mask)
    torch.testing.assert_close(values.grad, expected, **_tolerance(torch.float32, 256))
