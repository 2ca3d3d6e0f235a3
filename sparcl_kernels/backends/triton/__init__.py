"""The Triton backend: the GPU path for all three passes, masked weight gradient included.

The default backend for CUDA tensors. With ``TRITON_INTERPRET=1`` set before import, the
same kernels run on CPU tensors in Triton's interpreter, which is how CI checks them (slowly:
it is a correctness tool, not a fast path). Block sides 16/32/64/128 (square or rectangular)
and fp32/bf16/fp16 inputs run the kernels, accumulating in fp32; fp32 follows
``torch.backends.cuda.matmul.allow_tf32`` as torch's own matmul does. The ops run other
block sizes on the reference kernels, with a one-time warning. Convolutions are implicit
GEMMs: the kernels gather each block's kernel tap from channels-last activations (zero in
the padding), with no patch matrix (no ``F.unfold``/``F.fold``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import triton
from triton import knobs

from sparcl_kernels.backends.triton import kernels
from sparcl_kernels.backends.triton.tuning import meta_parameters, shipped_meta, tuning_source
from sparcl_kernels.geometry import ConvGeometry
from sparcl_kernels.layout import BlockLayout

NAME = "triton"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
KERNEL_BLOCK_SIDES = (16, 32, 64, 128)
MAX_PROGRAMS = 2**31 - 1  # CUDA's limit on grid dimension x
INTERPRETED = bool(knobs.runtime.interpret)  # fixed when the kernels were decorated


def supports_device(device: torch.device) -> bool:
    return device.type == "cuda" or (INTERPRETED and device.type == "cpu")


def supports_block_size(block_size: tuple[int, int]) -> bool:
    return all(side in KERNEL_BLOCK_SIDES for side in block_size)


def describe() -> dict[str, Any]:
    return {
        "triton": triton.__version__,
        "interpreted": INTERPRETED,
        "meta_parameters": tuning_source(),
    }


# ---------------------------------------------------------------- checks and fallbacks


def _check(name: str, tensor: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(
            f"triton backend: {name} must have shape {shape}, got {tuple(tensor.shape)}"
        )
    if tensor.dtype != like.dtype or tensor.device != like.device:
        raise TypeError(
            f"triton backend: {name} is {tensor.dtype} on {tensor.device}, "
            f"expected {like.dtype} on {like.device}"
        )
    if not tensor.is_contiguous():
        raise ValueError(f"triton backend: {name} must be contiguous")


def _check_layout(values: torch.Tensor, layout: BlockLayout) -> None:
    if tuple(values.shape) != layout.values_shape:
        raise ValueError(
            f"triton backend: values must have shape {layout.values_shape}, "
            f"got {tuple(values.shape)}"
        )
    if values.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton backend supports {SUPPORTED_DTYPES}, got {values.dtype}")
    if not supports_device(values.device):
        raise ValueError(f"triton backend cannot run on {values.device} tensors")
    _check_block_size(layout)


def _check_block_size(layout: BlockLayout) -> None:
    if not supports_block_size(layout.block_size):
        raise ValueError(
            f"triton kernels take block sides {KERNEL_BLOCK_SIDES}, got {layout.block_size}"
        )


def _dot_options(dtype: torch.dtype) -> dict[str, Any]:
    """How ``tl.dot`` multiplies: TF32 only where torch's own fp32 matmul would use it."""
    exact = dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    return {
        "PRECISION": "ieee" if exact else "tf32",  # ignored for 16-bit inputs
        "UPCAST": INTERPRETED and dtype == torch.bfloat16,  # see kernels.py
    }


def _launch(
    kernel: Callable,
    programs: int,
    device: torch.device,
    *args: Any,
    num_warps: int,
    num_stages: int,
    **meta,
):
    """Launch ``programs`` programs on ``device`` (not merely the current CUDA device), in
    several grids when one would exceed CUDA's limit."""
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:
        for offset in range(0, programs, MAX_PROGRAMS):
            count = min(MAX_PROGRAMS, programs - offset)
            kernel[(count,)](*args, offset, num_warps=num_warps, num_stages=num_stages, **meta)


def _split_launch_options(meta: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    options = {key: meta.pop(key) for key in ("num_warps", "num_stages")}
    return options, meta


def shared_memory_limit(device: torch.device) -> int | None:
    """Bytes of shared memory a program may use on ``device`` (None off the GPU)."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def fit_stages(options: dict[str, int], stage_bytes: int, limit: int | None) -> dict[str, int]:
    """``options`` with ``num_stages`` lowered until the pipelined operand tiles
    (``stage_bytes`` per stage) fit the device's shared memory ``limit``: a 128-wide fp32
    block tile with 3 stages needs more than many GPUs have."""
    stages = options["num_stages"]
    while limit is not None and stages > 1 and stages * stage_bytes > limit:
        stages -= 1
    return {**options, "num_stages": stages}


# ---------------------------------------------------------------- the three passes


def forward(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    bias: torch.Tensor | None,
    meta: dict[str, int] | None = None,
) -> torch.Tensor:
    """``y [N, M] = x [N, K] @ W.T + bias``. ``meta`` overrides the table (for tuners)."""
    _check_layout(values, layout)
    m, k = layout.shape
    n = x.shape[0]
    _check("x", x, (n, k), values)
    if bias is not None:
        _check("bias", bias, (m,), values)
    return _forward(x, values, layout, bias, meta, x.new_empty(n, m), _LINEAR, False)


def _forward(x, values, layout, bias, meta, y, gather, conv) -> torch.Tensor:
    """The forward launch shared by the linear and the convolution (``conv``: ``y``'s rows
    are output pixels, patches gathered with ``gather``)."""
    m, k = layout.shape
    rows = y.numel() // m if m else 0
    if rows == 0 or m == 0:
        return y
    bm, bk = layout.block_size
    meta = meta or meta_parameters("forward", (bm, bk), x.dtype, rows)
    options, meta = _split_launch_options(dict(meta))
    stage_bytes = (meta["BLOCK_N"] + bm) * meta["CHUNK"] * x.element_size()
    options = fit_stages(options, stage_bytes, shared_memory_limit(x.device))
    _launch(
        kernels.forward_kernel,
        triton.cdiv(rows, meta["BLOCK_N"]) * layout.block_grid[0],
        x.device,
        x,
        values,
        bias if bias is not None else y,  # never read without HAS_BIAS
        y,
        layout.row_offsets,
        layout.col_indices,
        rows,
        k,
        m,
        layout.block_grid[0],
        *gather,
        BM=bm,
        BK=bk,
        HAS_BIAS=bias is not None,
        GATHER=conv,
        **_dot_options(x.dtype),
        **meta,
        **options,
    )
    return y


def grad_input(
    grad_out: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    meta: dict[str, int] | None = None,
) -> torch.Tensor:
    """``dx [N, K] = dy [N, M] @ W`` through the transpose index."""
    _check_layout(values, layout)
    m, k = layout.shape
    n = grad_out.shape[0]
    _check("grad_out", grad_out, (n, m), values)
    grad_x = grad_out.new_empty(n, k)
    if n == 0 or k == 0:
        return grad_x
    bm, bk = layout.block_size
    meta = meta or meta_parameters("grad_input", (bm, bk), grad_out.dtype, n)
    options, meta = _split_launch_options(dict(meta))
    stage_bytes = (meta["BLOCK_N"] + bk) * meta["CHUNK"] * grad_out.element_size()
    options = fit_stages(options, stage_bytes, shared_memory_limit(grad_out.device))
    programs = triton.cdiv(n, meta["BLOCK_N"]) * layout.block_grid[1]
    _launch(
        kernels.grad_input_kernel,
        programs,
        grad_out.device,
        grad_out,
        values,
        grad_x,
        layout.transpose_offsets,
        layout.transpose_block_ids,
        layout.row_indices,
        n,
        k,
        m,
        layout.block_grid[1],
        BM=bm,
        BK=bk,
        **_dot_options(grad_out.dtype),
        **meta,
        **options,
    )
    return grad_x


def grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    layout: BlockLayout,
    grad_block_mask: torch.Tensor | None,
    meta: dict[str, int] | None = None,
) -> torch.Tensor:
    """``dW[b]`` for the stored blocks; those the mask switches off come back exactly zero.

    The grid does not depend on the mask (masked blocks reduce over no rows), so nothing
    waits for the GPU to list the active blocks and CUDA graphs can capture the backward.
    Where the blocks alone would leave processors idle, the batch is split into segments
    summed by a second pass (see kernels.grad_weight_kernel: the same bits either way).
    """
    m, k = layout.shape
    n = x.shape[0]
    _check("x", x, (n, k), x)
    _check("grad_out", grad_out, (n, m), x)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton backend supports {SUPPORTED_DTYPES}, got {x.dtype}")
    if grad_block_mask is not None and (
        grad_block_mask.dtype != torch.bool or tuple(grad_block_mask.shape) != (layout.nnz,)
    ):
        raise ValueError(f"triton backend: grad_block_mask must be bool of shape ({layout.nnz},)")
    _check_block_size(layout)
    return _weight_gradient(grad_out, x, layout, grad_block_mask, meta, n, _LINEAR, False)


# The geometry arguments (H, W, C, OH, OW, KW, SH, SW, PH, PW, DH, DW) of a kernel that can
# gather convolution patches; a linear pass does not read them.
_LINEAR = (1,) * 12


def _gather_geometry(x: torch.Tensor, geometry: ConvGeometry, out_hw) -> tuple[int, ...]:
    """The gather arguments of channels-last ``x [N, H, W, C]`` under ``geometry``."""
    _, h, w, c = x.shape
    g = geometry
    strides_pads = (g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w)
    return (h, w, c, *out_hw, g.kernel_w, *strides_pads)


def _weight_gradient(grad_out, x, layout, grad_block_mask, meta, rows, gather, conv):
    """The weight-gradient launch shared by the linear and the convolution (``conv``:
    ``rows`` output pixels, patches gathered with ``gather``)."""
    m, k = layout.shape
    bm, bk = layout.block_size
    grad_values = x.new_empty(layout.nnz, bm, bk)
    if layout.nnz == 0:
        return grad_values
    meta = {**shipped_meta("grad_weight", (bm, bk), rows)} | dict(
        meta or meta_parameters("grad_weight", (bm, bk), x.dtype, rows)
    )
    options, meta = _split_launch_options(meta)
    stage_bytes = meta["BLOCK_N"] * (meta["TILE_M"] + meta["TILE_K"]) * x.element_size()
    options = fit_stages(options, stage_bytes, shared_memory_limit(x.device))
    tiles = layout.nnz * (bm // meta["TILE_M"]) * (bk // meta["TILE_K"])
    n_segments = max(1, triton.cdiv(rows, meta["SEGMENT"]))
    split = meta.pop("SPLIT", None)
    if split is None:
        split = n_segments > 1 and tiles < 2 * _processor_count(x.device)
    mask = grad_block_mask.view(torch.uint8) if grad_block_mask is not None else x
    out = x.new_empty(n_segments, layout.nnz, bm, bk, dtype=torch.float32) if split else None
    arguments = (grad_out, x, grad_values if out is None else out, mask, layout.row_indices)
    arguments += (layout.col_indices, rows, k, m, n_segments, layout.nnz * bm * bk, *gather)
    constants = {"BM": bm, "BK": bk, "SPLIT": bool(split), "GATHER": conv}
    constants |= {"HAS_MASK": grad_block_mask is not None} | _dot_options(x.dtype) | meta
    programs = tiles * (n_segments if split else 1)
    _launch(kernels.grad_weight_kernel, programs, x.device, *arguments, **constants, **options)
    if out is None:
        return grad_values
    # Split over the rows: fp32 sums per segment, then added in order (no atomics).
    total, rblock = grad_values.numel(), 1024
    _launch(
        kernels.sum_segments_kernel,
        triton.cdiv(total, rblock),
        x.device,
        out,
        grad_values,
        total,
        n_segments,
        RBLOCK=rblock,
        num_warps=4,
        num_stages=1,
    )
    return grad_values


def _processor_count(device: torch.device) -> int:
    """Streaming multiprocessors that a grid should keep busy (1 in the interpreter)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


# ---------------------------------------------------------------- convolution (implicit GEMM)


def _check_conv(x: torch.Tensor, values: torch.Tensor, layout: BlockLayout, geometry) -> None:
    _check_layout(values, layout)
    n, h, w, c = x.shape
    _check("x", x, (n, h, w, c), values)
    if layout.shape[1] != geometry.taps * c or c % layout.block_size[1]:
        raise ValueError(
            f"triton backend: layout {layout.shape} with blocks {layout.block_size} does not "
            f"fit {c} channels x {geometry.taps} taps"
        )


def conv_forward(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    meta: dict[str, int] | None = None,
) -> torch.Tensor:
    """``y [N, OH, OW, C_out]`` of channels-last ``x``, the patches gathered in the kernel."""
    _check_conv(x, values, layout, geometry)
    m = layout.shape[0]
    if bias is not None:
        _check("bias", bias, (m,), values)
    out_hw = geometry.output_size((x.shape[1], x.shape[2]))
    y = x.new_empty(x.shape[0], *out_hw, m)
    return _forward(x, values, layout, bias, meta, y, _gather_geometry(x, geometry, out_hw), True)


def conv_grad_input(
    grad_out: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    geometry: ConvGeometry,
    in_hw: tuple[int, int],
    meta: dict[str, int] | None = None,
) -> torch.Tensor:
    """Channels-last ``dx [N, H, W, C_in]``, every element written once (no col2im)."""
    _check_layout(values, layout)
    n, out_h, out_w, m = grad_out.shape
    _check("grad_out", grad_out, (n, out_h, out_w, layout.shape[0]), values)
    bm, bk = layout.block_size
    channels = layout.shape[1] // geometry.taps
    grad_x = grad_out.new_empty(n, *in_hw, channels)
    pixels = grad_x.numel() // max(channels, 1)
    if pixels == 0 or channels == 0:
        return grad_x
    meta = meta or meta_parameters("grad_input", (bm, bk), grad_out.dtype, pixels)
    options, meta = _split_launch_options(dict(meta))
    meta.pop("CHUNK", None)
    stage_bytes = (meta["BLOCK_N"] + bk) * bm * grad_out.element_size()
    options = fit_stages(options, stage_bytes, shared_memory_limit(grad_out.device))
    groups = channels // bk
    _launch(
        kernels.conv_grad_input_kernel,
        triton.cdiv(pixels, meta["BLOCK_N"]) * groups,
        grad_out.device,
        grad_out,
        values,
        grad_x,
        layout.transpose_offsets,
        layout.transpose_block_ids,
        layout.row_indices,
        pixels,
        m,
        groups,
        geometry.taps,
        *_gather_geometry(grad_x, geometry, (out_h, out_w)),
        BM=bm,
        BK=bk,
        **_dot_options(grad_out.dtype),
        **meta,
        **options,
    )
    return grad_x


def conv_grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    layout: BlockLayout,
    grad_block_mask: torch.Tensor | None,
    geometry: ConvGeometry,
    meta: dict[str, int] | None = None,
) -> torch.Tensor:
    """``dW`` of the convolution: the weight-gradient kernel gathering patches itself."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton backend supports {SUPPORTED_DTYPES}, got {x.dtype}")
    n, h, w, c = x.shape
    _check("x", x, (n, h, w, c), x)
    out_hw = geometry.output_size((h, w))
    _check("grad_out", grad_out, (n, *out_hw, layout.shape[0]), x)
    _check_block_size(layout)
    rows = n * out_hw[0] * out_hw[1]
    gather = _gather_geometry(x, geometry, out_hw)
    return _weight_gradient(grad_out, x, layout, grad_block_mask, meta, rows, gather, True)
