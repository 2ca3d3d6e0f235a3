"""SparseLinear: a drop-in ``nn.Linear`` whose weight is block-sparse."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sparcl_kernels.nn.base import BlockSparseWeight
from sparcl_kernels.ops import block_sparse_linear


class SparseLinear(BlockSparseWeight):
    """``y = x @ W.T + b`` with ``W [out_features, in_features]`` stored as blocks.

    The weight is initialised like ``nn.Linear`` and the ``(1 - sparsity)`` fraction of blocks
    with the largest norm is kept. Forward, input gradient and weight gradient compute only the
    stored blocks.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        block_size: int | Sequence[int] = (32, 32),
        sparsity: float = 0.9,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        weight = torch.empty(out_features, in_features, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self._init_block_sparse(weight, block_size, sparsity)
        if bias:
            bound = 1 / math.sqrt(in_features) if in_features > 0 else 0.0
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        sparsity: float = 0.9,
        block_size: int | Sequence[int] = (32, 32),
    ) -> SparseLinear:
        """Keep the largest-norm blocks of ``linear.weight``; copies bias."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        module = cls.__new__(cls)
        BlockSparseWeight.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        module._init_block_sparse(linear.weight, block_size, sparsity)
        bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        module.register_parameter("bias", bias)
        return module

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (zeros outside stored blocks)."""
        dense = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.values.device,
            dtype=self.values.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight_2d())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def forward(self, x: Tensor) -> Tensor:
        return block_sparse_linear(x, self.values, self.layout, self.bias, self.grad_block_mask)

    def geometry(self) -> tuple[int, ...]:
        return (0, self.out_features, self.in_features, 1, 1, *self.block_size, 0)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {self._sparse_repr()}"
        )
