"""SparseConv2d: a drop-in ``nn.Conv2d`` whose weight is block-sparse.

The convolution runs as an implicit GEMM over input patches in channels-last order (no patch
matrix is built on the CPU fast path): the weight is viewed as
``[out_channels, kh * kw * in_channels]`` (column = (tap, input channel)), and a block is ``bm``
output channels x ``bk`` input channels at one kernel tap. ``block_taps`` says what a layout
change keeps or drops at once: ``"each"`` (the default) one block, the finest granularity the
block kernels can exploit; ``"all"`` the kh x kw blocks of one (output block, input block)
channel pair, for all taps together -- coarser, the same kernels. README.md records the
measured accuracy and speed of both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from sparcl_kernels.geometry import ConvGeometry
from sparcl_kernels.nn.base import BlockSparseWeight
from sparcl_kernels.ops import block_sparse_conv2d

BLOCK_TAPS = ("each", "all")


def check_block_taps(block_taps: str) -> None:
    """``ValueError`` unless ``block_taps`` names a tap policy."""
    if block_taps not in BLOCK_TAPS:
        raise ValueError(f"block_taps must be one of {BLOCK_TAPS}, got {block_taps!r}")


def conv_weight_to_gemm(weight: Tensor) -> Tensor:
    """``[Cout, Cin, kh, kw]`` -> ``[Cout, kh * kw * Cin]`` with columns ordered (tap, channel)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def gemm_to_conv_weight(
    weight_2d: Tensor, in_channels: int, kernel_size: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`conv_weight_to_gemm`."""
    kh, kw = kernel_size
    return weight_2d.reshape(weight_2d.shape[0], kh, kw, in_channels).permute(0, 3, 1, 2)


class SparseConv2d(BlockSparseWeight):
    """2-D convolution (groups=1, zero padding) computing only stored weight blocks.

    Takes ``[N, C, H, W]`` input in any memory format and returns ``[N, C_out, OH, OW]``
    with channels-last strides (no copy): the kernels compute in channels-last.
    ``block_taps="all"`` stores the kernel taps of a channel block together (one unit per
    ``bm`` x ``bk`` channel pair; see the module docstring), ``"each"`` per tap. A
    channels-last model (what :func:`~sparcl_kernels.sparsify` makes by default; by hand:
    ``model.to(memory_format=torch.channels_last)``) then runs every layer in one format with
    no layout copies; in an NCHW model the NCHW inputs are copied, and element-wise ops that
    mix the two formats (residual sums) run slower than in either.
    """

    block_taps: str = "each"  # modules pickled before the option existed were per-tap

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        block_size: int | Sequence[int] = (32, 32),
        sparsity: float = 0.9,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        block_taps: str = "each",
    ) -> None:
        super().__init__()
        dense = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self._init_from_conv(dense, block_size, sparsity, block_taps)

    def _init_from_conv(
        self, conv: nn.Conv2d, block_size: int | Sequence[int], sparsity: float, block_taps: str
    ) -> None:
        check_block_taps(block_taps)
        if conv.groups != 1:
            raise ValueError(f"SparseConv2d supports groups=1 only, got groups={conv.groups}")
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"SparseConv2d supports padding_mode='zeros', got {conv.padding_mode!r}"
            )
        if isinstance(conv.padding, str):
            raise ValueError("SparseConv2d needs explicit integer padding, not 'same'/'valid'")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = _pair(conv.kernel_size)
        self.stride, self.padding = _pair(conv.stride), _pair(conv.padding)
        self.dilation = _pair(conv.dilation)
        try:  # the op's own rule, so a bad geometry fails here and not at the first forward
            ConvGeometry.of(self.kernel_size, self.stride, self.padding, self.dilation)
        except ValueError as error:
            raise ValueError(f"SparseConv2d: {error}") from None
        block = _pair(block_size)
        if self.in_channels % block[1]:
            raise ValueError(
                f"block_size {block} must have bk dividing in_channels={self.in_channels} "
                "(a block covers bk input channels at one kernel tap)"
            )
        self.block_taps = block_taps
        taps = self.kernel_size[0] * self.kernel_size[1]
        tied = taps if block_taps == "all" else 1
        self._init_block_sparse(conv_weight_to_gemm(conv.weight), block, sparsity, None, tied)
        bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.register_parameter("bias", bias)

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        sparsity: float = 0.9,
        block_size: int | Sequence[int] = (32, 32),
        block_taps: str = "each",
    ) -> SparseConv2d:
        """Keep the largest-norm units of ``conv.weight``: (tap, channel-block) blocks, or with
        ``block_taps="all"`` channel blocks over all taps; copies bias."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        module = cls.__new__(cls)
        BlockSparseWeight.__init__(module)
        module._init_from_conv(conv, block_size, sparsity, block_taps)
        return module

    def to_dense(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d`` (zeros outside stored blocks)."""
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=self.bias is not None,
            device=self.values.device,
            dtype=self.values.dtype,
        )
        with torch.no_grad():
            weight = gemm_to_conv_weight(self.dense_weight_2d(), self.in_channels, self.kernel_size)
            dense.weight.copy_(weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SparseConv2d expects input [N, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        return block_sparse_conv2d(
            x,
            self.values,
            self.layout,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.bias,
            self.grad_block_mask,
        )

    def geometry(self) -> tuple[int, ...]:
        tied = int(self.block_taps == "all")
        return (1, self.out_channels, self.in_channels, *self.kernel_size, *self.block_size, tied)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, block_taps={self.block_taps!r}, {self._sparse_repr()}"
        )
