"""Convolution by im2col: an explicit patch matrix fed to a backend's linear kernels.

For backends without implicit-GEMM conv kernels. Activations are channels-last
``[N, H, W, C]``; a patch row's column is ``tap * C + channel`` (the layers' GEMM view of a
conv weight). The patch matrix costs ``taps`` times the input's memory, which is why the CPU
backend has implicit-GEMM kernels instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparcl_kernels.geometry import ConvGeometry
from sparcl_kernels.layout import BlockLayout


def im2col(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """``[N * OH * OW, taps * C]`` patch matrix of channels-last ``x``."""
    n, _, _, c = x.shape
    patches = F.unfold(x.permute(0, 3, 1, 2), **geometry.unfold_arguments())
    return patches.view(n, c, geometry.taps, -1).permute(0, 3, 2, 1).reshape(-1, geometry.taps * c)


def col2im(
    rows: torch.Tensor, geometry: ConvGeometry, batch: int, in_hw: tuple[int, int]
) -> torch.Tensor:
    """Channels-last ``[N, H, W, C]`` sum of patch-matrix rows folded back onto the input."""
    channels = rows.shape[1] // geometry.taps
    patches = (
        rows.view(batch, -1, geometry.taps, channels)
        .permute(0, 3, 2, 1)
        .reshape(batch, channels * geometry.taps, -1)
    )
    folded = F.fold(patches, in_hw, **geometry.unfold_arguments())
    return folded.permute(0, 2, 3, 1).contiguous()


def im2col_convolution(forward: Callable, grad_input: Callable, grad_weight: Callable) -> tuple:
    """The three conv passes of a backend, built from its three linear passes."""

    def conv_forward(
        x: torch.Tensor,
        values: torch.Tensor,
        layout: BlockLayout,
        bias: torch.Tensor | None,
        geometry: ConvGeometry,
    ) -> torch.Tensor:
        """``y [N, OH, OW, Cout]`` of channels-last ``x`` convolved with the sparse weight."""
        out_h, out_w = geometry.output_size((x.shape[1], x.shape[2]))
        rows = forward(im2col(x, geometry), values, layout, bias)
        return rows.view(x.shape[0], out_h, out_w, -1)

    def conv_grad_input(
        grad_out: torch.Tensor,
        values: torch.Tensor,
        layout: BlockLayout,
        geometry: ConvGeometry,
        in_hw: tuple[int, int],
    ) -> torch.Tensor:
        """``grad_x [N, H, W, C]`` through the stored blocks (patch gradients folded back)."""
        rows = grad_input(grad_out.reshape(-1, grad_out.shape[-1]), values, layout)
        return col2im(rows, geometry, grad_out.shape[0], in_hw)

    def conv_grad_weight(
        grad_out: torch.Tensor,
        x: torch.Tensor,
        layout: BlockLayout,
        grad_block_mask: torch.Tensor | None,
        geometry: ConvGeometry,
    ) -> torch.Tensor:
        """Stored-block weight gradient of the convolution; masked-off blocks exactly zero."""
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        return grad_weight(grad_rows, im2col(x, geometry), layout, grad_block_mask)

    return conv_forward, conv_grad_input, conv_grad_weight
