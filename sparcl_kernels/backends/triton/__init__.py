"""The Triton backend: the GPU path for all three passes, masked weight gradient included.

The default backend for CUDA tensors. With ``TRITON_INTERPRET=1`` set before import, the
same kernels run on CPU tensors in Triton's interpreter, which is how CI checks them (slowly:
it is a correctness tool, not a fast path). Block sides 16/32/64/128 (square or rectangular)
and fp32/bf16/fp16 inputs run the kernels, accumulating in fp32; fp32 follows
``torch.backends.cuda.matmul.allow_tf32`` as torch's own matmul does. The ops run other
block sizes on the reference kernels, with a one-time warning. Convolutions go through an
explicit patch matrix (backends/im2col.py) into these kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
from triton import knobs

from sparcl_kernels.backends.im2col import im2col_convolution
from sparcl_kernels.backends.triton import kernels
from sparcl_kernels.backends.triton.tuning import meta_parameters, tuning_source
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


def _launch(kernel: Callable, programs: int, *args: Any, num_warps: int, num_stages: int, **meta):
    """Launch ``programs`` programs, in several grids when one would exceed CUDA's limit."""
    for offset in range(0, programs, MAX_PROGRAMS):
        count = min(MAX_PROGRAMS, programs - offset)
        kernel[(count,)](*args, offset, num_warps=num_warps, num_stages=num_stages, **meta)


def _split_launch_options(meta: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    options = {key: meta.pop(key) for key in ("num_warps", "num_stages")}
    return options, meta


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
    y = x.new_empty(n, m)
    if n == 0 or m == 0:
        return y
    bm, bk = layout.block_size
    meta = meta or meta_parameters("forward", (bm, bk), x.dtype, n)
    options, meta = _split_launch_options(dict(meta))
    programs = triton.cdiv(n, meta["BLOCK_N"]) * layout.block_grid[0]
    _launch(
        kernels.forward_kernel,
        programs,
        x,
        values,
        bias if bias is not None else y,  # never read without HAS_BIAS
        y,
        layout.row_offsets,
        layout.col_indices,
        n,
        k,
        m,
        layout.block_grid[0],
        BM=bm,
        BK=bk,
        HAS_BIAS=bias is not None,
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
    programs = triton.cdiv(n, meta["BLOCK_N"]) * layout.block_grid[1]
    _launch(
        kernels.grad_input_kernel,
        programs,
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
    """``dW[b]`` for the stored blocks the mask keeps; no program runs for the others."""
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
    bm, bk = layout.block_size
    if grad_block_mask is None:
        grad_values = x.new_empty(layout.nnz, bm, bk)
        active = torch.arange(layout.nnz, dtype=torch.int32, device=x.device)
    else:
        grad_values = x.new_zeros(layout.nnz, bm, bk)
        active = grad_block_mask.nonzero().squeeze(1).to(torch.int32)
    if n == 0:
        return grad_values.zero_()
    if active.numel() == 0:
        return grad_values
    meta = meta or meta_parameters("grad_weight", (bm, bk), x.dtype, n)
    options, meta = _split_launch_options(dict(meta))
    programs = active.numel() * (bm // meta["TILE_M"]) * (bk // meta["TILE_K"])
    _launch(
        kernels.grad_weight_kernel,
        programs,
        grad_out,
        x,
        grad_values,
        active,
        layout.row_indices,
        layout.col_indices,
        n,
        k,
        m,
        BM=bm,
        BK=bk,
        **_dot_options(x.dtype),
        **meta,
        **options,
    )
    return grad_values


conv_forward, conv_grad_input, conv_grad_weight = im2col_convolution(
    forward, grad_input, grad_weight
)
