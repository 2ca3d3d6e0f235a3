"""The C++/OpenMP/AVX2 CPU backend (csrc/cpu), built by setup.py as ``sparcl_kernels._cpu``.

Importing this module raises ``ImportError`` when the extension was not built; the registry
turns that into a visible fallback. Kernels run on as many threads as ``torch.get_num_threads()``.
"""

from __future__ import annotations

from typing import Any

import torch

from sparcl_kernels import _cpu
from sparcl_kernels.layout import BlockLayout

NAME = "cpu"
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def supports_device(device: torch.device) -> bool:
    return device.type == "cpu"


def describe() -> dict[str, Any]:
    return {"simd": _cpu.simd(), "threads": torch.get_num_threads()}


def forward(
    x: torch.Tensor, values: torch.Tensor, layout: BlockLayout, bias: torch.Tensor | None
) -> torch.Tensor:
    return _cpu.forward(x, values, *layout.tensors(), None if bias is None else bias.contiguous())


def grad_input(grad_out: torch.Tensor, values: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    return _cpu.grad_input(grad_out, values, *layout.tensors())


def grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    layout: BlockLayout,
    grad_block_mask: torch.Tensor | None,
) -> torch.Tensor:
    mask = None if grad_block_mask is None else grad_block_mask.contiguous()
    return _cpu.grad_weight(grad_out, x, *layout.block_size, *layout.tensors(), mask)


def conv_forward(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    bias: torch.Tensor | None,
    geometry: list[int],
) -> torch.Tensor:
    bias = None if bias is None else bias.contiguous()
    return _cpu.conv_forward(x, values, *layout.tensors(), bias, geometry)


def conv_grad_input(
    grad_out: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    geometry: list[int],
    in_hw: tuple[int, int],
) -> torch.Tensor:
    return _cpu.conv_grad_input(grad_out, values, *layout.tensors(), geometry, *in_hw)


def conv_grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    layout: BlockLayout,
    grad_block_mask: torch.Tensor | None,
    geometry: list[int],
) -> torch.Tensor:
    mask = None if grad_block_mask is None else grad_block_mask.contiguous()
    return _cpu.conv_grad_weight(grad_out, x, *layout.block_size, *layout.tensors(), mask, geometry)
