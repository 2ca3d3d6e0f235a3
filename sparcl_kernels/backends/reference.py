"""Pure-torch kernels: the test oracle and the fallback for every other backend.

Each pass gathers the operand slices that stored blocks touch, multiplies all blocks in one
batched matmul and scatter-adds the block results. The dense weight is never materialised, so
the work is proportional to ``nnz`` (the gathers cost memory, which is why this is not the fast
path). All functions take 2-D contiguous operands; the op layer reshapes and checks.
"""

from __future__ import annotations

import torch

from sparcl_kernels.backends.im2col import im2col_convolution
from sparcl_kernels.layout import BlockLayout

NAME = "reference"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def supports_device(device: torch.device) -> bool:
    """The reference runs wherever torch does."""
    return True


def supports_block_size(block_size: tuple[int, int]) -> bool:
    return True


def describe() -> dict:
    return {}


def _column_blocks(t: torch.Tensor, block: int) -> torch.Tensor:
    """``[N, C]`` -> ``[C / block, N, block]``: one slab per block column."""
    n, c = t.shape
    return t.view(n, c // block, block).transpose(0, 1)


def forward(
    x: torch.Tensor, values: torch.Tensor, layout: BlockLayout, bias: torch.Tensor | None
) -> torch.Tensor:
    """``y [N, M] = x [N, K] @ W.T + bias`` with ``W`` block-sparse."""
    n = x.shape[0]
    bm, bk = layout.block_size
    n_block_rows = layout.block_grid[0]
    x_slabs = _column_blocks(x, bk).index_select(0, layout.col_indices)  # [nnz, N, bk]
    partial = torch.bmm(x_slabs, values.transpose(1, 2))  # [nnz, N, bm]
    out = x.new_zeros(n_block_rows, n, bm).index_add_(0, layout.row_indices, partial)
    y = out.transpose(0, 1).reshape(n, n_block_rows * bm)
    return y if bias is None else y + bias


def grad_input(grad_out: torch.Tensor, values: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """``dX [N, K] = dY [N, M] @ W`` through the stored blocks only."""
    n = grad_out.shape[0]
    bm, bk = layout.block_size
    n_block_cols = layout.block_grid[1]
    dy_slabs = _column_blocks(grad_out, bm).index_select(0, layout.row_indices)  # [nnz, N, bm]
    partial = torch.bmm(dy_slabs, values)  # [nnz, N, bk]
    out = grad_out.new_zeros(n_block_cols, n, bk).index_add_(0, layout.col_indices, partial)
    return out.transpose(0, 1).reshape(n, n_block_cols * bk)


def grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    layout: BlockLayout,
    grad_block_mask: torch.Tensor | None,
) -> torch.Tensor:
    """``dW[b] = dY[:, rows(b)].T @ X[:, cols(b)]`` for the stored blocks ``b`` the mask keeps.

    Blocks switched off by ``grad_block_mask`` are not computed and come back exactly zero.
    """
    bm, bk = layout.block_size
    rows, cols = layout.row_indices, layout.col_indices
    active = None if grad_block_mask is None else grad_block_mask.nonzero().squeeze(1)
    if active is not None:
        rows, cols = rows.index_select(0, active), cols.index_select(0, active)
    dy_slabs = _column_blocks(grad_out, bm).index_select(0, rows)  # [nnz_active, N, bm]
    x_slabs = _column_blocks(x, bk).index_select(0, cols)  # [nnz_active, N, bk]
    blocks = torch.bmm(dy_slabs.transpose(1, 2), x_slabs)
    if active is None:
        return blocks
    return x.new_zeros(layout.nnz, bm, bk).index_copy_(0, active, blocks)


# ---------------------------------------------------------------- convolution
# Through the patch matrix (unfold) and the linear kernels above; see backends/im2col.py.

conv_forward, conv_grad_input, conv_grad_weight = im2col_convolution(
    forward, grad_input, grad_weight
)
