"""The kernel surface every backend module provides, checked when the registry loads it.

A backend is a module (one per backend) with the attributes of :class:`KernelBackend`:
its name, capabilities (dtypes, devices, block sizes) and the six kernels -- forward, input
gradient and weight gradient of the linear and of the convolution. Kernels take checked,
contiguous operands (the op layer validates arguments once, at the public boundary) and know
nothing of autograd. Kernels may take extra trailing parameters with defaults (e.g. a
tuner's meta-parameters).
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, Protocol

import torch
from torch import Tensor

from sparcl_kernels.geometry import ConvGeometry
from sparcl_kernels.layout import BlockLayout


class KernelBackend(Protocol):
    NAME: str
    SUPPORTED_DTYPES: tuple[torch.dtype, ...]

    def supports_device(self, device: torch.device) -> bool:
        """Whether the kernels run on tensors of ``device``."""
        ...

    def supports_block_size(self, block_size: tuple[int, int]) -> bool:
        """Whether the kernels take blocks of ``block_size``; the ops use the reference
        kernels, with a one-time warning, for the others."""
        ...

    def describe(self) -> dict[str, Any]:
        """Plain data about this backend for experiment records (versions, ISA, ...)."""
        ...

    def forward(
        self, x: Tensor, values: Tensor, layout: BlockLayout, bias: Tensor | None
    ) -> Tensor:
        """``y [N, M] = x [N, K] @ W.T + bias``."""
        ...

    def grad_input(self, grad_out: Tensor, values: Tensor, layout: BlockLayout) -> Tensor:
        """``dx [N, K] = dy [N, M] @ W`` through the stored blocks."""
        ...

    def grad_weight(
        self, grad_out: Tensor, x: Tensor, layout: BlockLayout, grad_block_mask: Tensor | None
    ) -> Tensor:
        """``dW [nnz, bm, bk]`` of the stored blocks; those the mask switches off exactly zero."""
        ...

    def conv_forward(
        self,
        x: Tensor,
        values: Tensor,
        layout: BlockLayout,
        bias: Tensor | None,
        geometry: ConvGeometry,
    ) -> Tensor:
        """``y [N, OH, OW, C_out]`` of channels-last ``x [N, H, W, C_in]``."""
        ...

    def conv_grad_input(
        self,
        grad_out: Tensor,
        values: Tensor,
        layout: BlockLayout,
        geometry: ConvGeometry,
        in_hw: tuple[int, int],
    ) -> Tensor:
        """Channels-last ``dx [N, H, W, C_in]``."""
        ...

    def conv_grad_weight(
        self,
        grad_out: Tensor,
        x: Tensor,
        layout: BlockLayout,
        grad_block_mask: Tensor | None,
        geometry: ConvGeometry,
    ) -> Tensor:
        """``dW [nnz, bm, bk]`` of the convolution's GEMM-view weight."""
        ...


KERNELS = (
    "forward",
    "grad_input",
    "grad_weight",
    "conv_forward",
    "conv_grad_input",
    "conv_grad_weight",
)
FUNCTIONS = ("supports_device", "supports_block_size", "describe", *KERNELS)
CONSTANTS = ("NAME", "SUPPORTED_DTYPES")


def check_backend(module: ModuleType) -> None:
    """Raise ``TypeError`` naming each part of :class:`KernelBackend` that ``module`` lacks
    or declares with other parameters."""
    problems = [f"no {name}" for name in CONSTANTS if not hasattr(module, name)]
    for name in FUNCTIONS:
        function = getattr(module, name, None)
        if not callable(function):
            problems.append(f"no function {name}()")
            continue
        wanted = list(inspect.signature(getattr(KernelBackend, name)).parameters)[1:]
        parameters = list(inspect.signature(function).parameters.values())
        names = [p.name for p in parameters]
        extra = parameters[len(wanted) :]
        if names[: len(wanted)] != wanted or any(p.default is p.empty for p in extra):
            problems.append(f"{name}({', '.join(names)}) instead of {name}({', '.join(wanted)})")
    if problems:
        raise TypeError(
            f"backend module {module.__name__} breaks the protocol: {'; '.join(problems)}"
        )
