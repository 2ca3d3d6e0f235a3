"""Drop-in block-sparse layers and the model patcher."""

from sparcl_kernels.nn.base import BlockSparseWeight
from sparcl_kernels.nn.conv import SparseConv2d
from sparcl_kernels.nn.linear import SparseLinear
from sparcl_kernels.nn.sparsify import SparsifyDecision, plan_sparsify, sparsify

__all__ = [
    "BlockSparseWeight",
    "SparseConv2d",
    "SparseLinear",
    "SparsifyDecision",
    "plan_sparsify",
    "sparsify",
]
