"""Convolution through an explicit patch matrix, for backends without a native conv kernel.

``geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)``;
activations are channels-last ``[N, H, W, C]``; a patch row's column is ``tap * C + channel``
(the layers' GEMM view of a conv weight). The patch matrix costs ``kh * kw`` times the input's
memory, which is why the CPU backend has implicit-GEMM kernels instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sparcl_kernels.layout import BlockLayout


def _unfold_args(geometry: list[int]) -> dict:
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    return {"kernel_size": (kh, kw), "dilation": (dh, dw), "padding": (ph, pw), "stride": (sh, sw)}


def patch_rows(x: torch.Tensor, geometry: list[int]) -> torch.Tensor:
    """``[N * OH * OW, kh * kw * C]`` patch matrix of channels-last ``x``."""
    n, _, _, c = x.shape
    patches = torch.nn.functional.unfold(x.permute(0, 3, 1, 2), **_unfold_args(geometry))
    taps = geometry[0] * geometry[1]
    return patches.view(n, c, taps, -1).permute(0, 3, 2, 1).reshape(-1, taps * c)


def output_hw(in_hw: tuple[int, int], geometry: list[int]) -> tuple[int, int]:
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    return (
        (in_hw[0] + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
        (in_hw[1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1,
    )


def patch_convolution(forward: Callable, grad_input: Callable, grad_weight: Callable) -> tuple:
    """The three conv passes of a backend, built from its three linear passes."""

    def conv_forward(
        x: torch.Tensor,
        values: torch.Tensor,
        layout: BlockLayout,
        bias: torch.Tensor | None,
        geometry: list[int],
    ) -> torch.Tensor:
        """``y [N, OH, OW, Cout]`` of channels-last ``x`` convolved with the sparse weight."""
        oh, ow = output_hw((x.shape[1], x.shape[2]), geometry)
        rows = forward(patch_rows(x, geometry), values, layout, bias)
        return rows.view(x.shape[0], oh, ow, -1)

    def conv_grad_input(
        grad_out: torch.Tensor,
        values: torch.Tensor,
        layout: BlockLayout,
        geometry: list[int],
        in_hw: tuple[int, int],
    ) -> torch.Tensor:
        """``grad_x [N, H, W, C]`` through the stored blocks (patch gradients folded back)."""
        n = grad_out.shape[0]
        taps = geometry[0] * geometry[1]
        channels = layout.shape[1] // taps
        d_rows = grad_input(grad_out.reshape(-1, grad_out.shape[-1]), values, layout)
        d_patches = (
            d_rows.view(n, -1, taps, channels).permute(0, 3, 2, 1).reshape(n, channels * taps, -1)
        )
        grad_x = torch.nn.functional.fold(d_patches, in_hw, **_unfold_args(geometry))
        return grad_x.permute(0, 2, 3, 1).contiguous()

    def conv_grad_weight(
        grad_out: torch.Tensor,
        x: torch.Tensor,
        layout: BlockLayout,
        grad_block_mask: torch.Tensor | None,
        geometry: list[int],
    ) -> torch.Tensor:
        """Stored-block weight gradient of the convolution; masked-off blocks exactly zero."""
        rows = patch_rows(x, geometry)
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        return grad_weight(grad_rows, rows, layout, grad_block_mask)

    return conv_forward, conv_grad_input, conv_grad_weight
