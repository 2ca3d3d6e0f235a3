"""The CUDA backend (csrc/cuda), built by setup.py as ``sparcl_kernels._cuda`` only where the
installed torch has CUDA; importing this module raises ``ImportError`` elsewhere and the
registry reports it. Select it with ``backend="cuda"`` (Triton stays the CUDA default).

Verified by compilation only (the extension against torch 2.14's CUDA build, and the ``.cu``
files for sm_75/80/90 with warnings as errors, in CI) until it has run on a GPU: the GPU tests
marked ``gpu`` compare it against the reference there.
"""

from __future__ import annotations

from typing import Any

import torch

from sparcl_kernels import _cuda
from sparcl_kernels.backends.im2col import im2col_convolution
from sparcl_kernels.layout import BlockLayout

NAME = "cuda"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def supports_device(device: torch.device) -> bool:
    return device.type == "cuda"


def describe() -> dict[str, Any]:
    return {
        "status": "compiled, not verified on a GPU (compare with the reference: pytest -m gpu)",
        "torch_cuda": torch.version.cuda,
        "gpu_present": torch.cuda.is_available(),
    }


def supports_block_size(block_size: tuple[int, int]) -> bool:
    return all(16 <= side <= 128 and side % 16 == 0 for side in block_size)  # plan.h


def forward(
    x: torch.Tensor, values: torch.Tensor, layout: BlockLayout, bias: torch.Tensor | None
) -> torch.Tensor:
    return _cuda.forward(x, values, *layout.tensors(), bias)


def grad_input(grad_out: torch.Tensor, values: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    return _cuda.grad_input(grad_out, values, *layout.tensors())


def grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    layout: BlockLayout,
    grad_block_mask: torch.Tensor | None,
) -> torch.Tensor:
    # The kernels skip masked blocks themselves: no nonzero(), no wait for the GPU.
    return _cuda.grad_weight(grad_out, x, *layout.tensors(), grad_block_mask, *layout.block_size)


conv_forward, conv_grad_input, conv_grad_weight = im2col_convolution(
    forward, grad_input, grad_weight
)
