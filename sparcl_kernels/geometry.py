"""The geometry of a 2-D convolution, as the conv kernels of every backend take it."""

from __future__ import annotations

from typing import NamedTuple


class ConvGeometry(NamedTuple):
    """Kernel size, stride, zero padding and dilation (height, width) of a convolution.

    A tuple of eight ints in that order, which is how it crosses into custom ops and C++.
    """

    kernel_h: int
    kernel_w: int
    stride_h: int = 1
    stride_w: int = 1
    pad_h: int = 0
    pad_w: int = 0
    dilation_h: int = 1
    dilation_w: int = 1

    @classmethod
    def of(
        cls,
        kernel_size: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
    ) -> ConvGeometry:
        """From ``nn.Conv2d``-style pairs; ``ValueError`` unless sizes are positive and
        padding is not negative."""
        pairs = {
            "kernel_size": kernel_size,
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
        }
        for name, pair in pairs.items():
            if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
                raise ValueError(f"{name} must be a pair of ints, got {pair!r}")
            if min(pair) < (0 if name == "padding" else 1):
                bound = ">= 0" if name == "padding" else "positive"
                raise ValueError(f"{name} must be {bound}, got {pair!r}")
        return cls(*kernel_size, *stride, *padding, *dilation)

    @property
    def taps(self) -> int:
        """Kernel positions: the GEMM view's K is ``taps * C_in``."""
        return self.kernel_h * self.kernel_w

    def output_size(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """Output height and width for an input of height and width ``in_hw``."""
        return (
            (in_hw[0] + 2 * self.pad_h - self.dilation_h * (self.kernel_h - 1) - 1) // self.stride_h
            + 1,
            (in_hw[1] + 2 * self.pad_w - self.dilation_w * (self.kernel_w - 1) - 1) // self.stride_w
            + 1,
        )

    def unfold_arguments(self) -> dict[str, tuple[int, int]]:
        """The keyword arguments ``F.unfold``/``F.fold`` (and ``F.conv2d``) take."""
        return {
            "kernel_size": (self.kernel_h, self.kernel_w),
            "dilation": (self.dilation_h, self.dilation_w),
            "padding": (self.pad_h, self.pad_w),
            "stride": (self.stride_h, self.stride_w),
        }
