"""The block-sparse weight format.

A weight ``W`` of shape ``[M, K]`` is cut into blocks of ``bm x bk``. Only the blocks named by a
:class:`BlockLayout` are stored, as a dense tensor ``values`` of shape ``[nnz, bm, bk]`` whose
blocks are in row-major ``(block_row, block_col)`` order. The layout holds the index metadata
every kernel needs, all ``int32``:

- ``row_offsets [M/bm + 1]`` and ``col_indices [nnz]``: CSR over block rows (forward pass);
- ``row_indices [nnz]``: the block row of each stored block (weight-gradient pass, where work is
  partitioned by block rather than by row);
- ``transpose_offsets [K/bk + 1]`` and ``transpose_block_ids [nnz]``: CSC over block columns,
  giving for each block column the ids of its blocks in increasing block-row order (input-gradient
  pass).

The transpose index is derived from the CSR index, never kept as a second source of truth.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

__all__ = ["BlockLayout"]

INDEX_DTYPE = torch.int32


def as_block_size(block_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(block_size, int) and not isinstance(block_size, bool):
        block_size = (block_size, block_size)
    try:
        # operator.index accepts integers only: 7.5 or "8" is an error, not silently 7 or 8.
        bm, bk = (operator.index(b) for b in block_size if not isinstance(b, bool))
    except (TypeError, ValueError):
        raise TypeError(
            f"block_size must be an int or a pair of ints (rows, cols), got {block_size!r}"
        ) from None
    if bm <= 0 or bk <= 0:
        raise ValueError(f"block_size must be positive, got {(bm, bk)}")
    return bm, bk


def _counts_to_offsets(counts: torch.Tensor) -> torch.Tensor:
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, dim=0, out=offsets[1:])
    return offsets.to(INDEX_DTYPE)


class BlockLayout:
    """Which ``bm x bk`` blocks of an ``[M, K]`` weight are stored, and the indices kernels need.

    Build one with :meth:`from_block_mask` or :meth:`from_dense`; a layout is immutable.
    Use :meth:`index_tensors` / :meth:`from_index_tensors` to keep it in module buffers.
    """

    __slots__ = (
        "block_size",
        "col_indices",
        "row_indices",
        "row_offsets",
        "shape",
        "transpose_block_ids",
        "transpose_offsets",
    )

    def __init__(
        self,
        shape: tuple[int, int],
        block_size: tuple[int, int],
        row_offsets: torch.Tensor,
        col_indices: torch.Tensor,
        row_indices: torch.Tensor,
        transpose_offsets: torch.Tensor,
        transpose_block_ids: torch.Tensor,
    ) -> None:
        # Private: callers go through the classmethods, which validate. The ops layer rebuilds
        # layouts from tensors it already checked, so this constructor does no work.
        self.shape = shape
        self.block_size = block_size
        self.row_offsets = row_offsets
        self.col_indices = col_indices
        self.row_indices = row_indices
        self.transpose_offsets = transpose_offsets
        self.transpose_block_ids = transpose_block_ids

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_block_mask(
        cls, block_mask: torch.Tensor, block_size: int | Sequence[int]
    ) -> BlockLayout:
        """Layout storing the blocks where ``block_mask`` (bool ``[M/bm, K/bk]``) is True."""
        if not isinstance(block_mask, torch.Tensor):
            raise TypeError(f"block_mask must be a torch.Tensor, got {type(block_mask).__name__}")
        if block_mask.dtype != torch.bool:
            raise TypeError(f"block_mask must have dtype torch.bool, got {block_mask.dtype}")
        if block_mask.dim() != 2:
            raise ValueError(
                f"block_mask must be 2-D [M/bm, K/bk], got shape {tuple(block_mask.shape)}"
            )
        bm, bk = as_block_size(block_size)
        n_block_rows, n_block_cols = block_mask.shape
        coords = block_mask.nonzero()  # row-major order: the canonical order of `values`
        row_indices = coords[:, 0].to(INDEX_DTYPE)
        col_indices = coords[:, 1].to(INDEX_DTYPE)
        row_offsets = _counts_to_offsets(block_mask.sum(dim=1))

        block_ids = torch.full(block_mask.shape, -1, dtype=INDEX_DTYPE, device=block_mask.device)
        block_ids[block_mask] = torch.arange(
            coords.shape[0], dtype=INDEX_DTYPE, device=block_mask.device
        )
        transpose_block_ids = block_ids.t()[block_mask.t()].contiguous()
        transpose_offsets = _counts_to_offsets(block_mask.sum(dim=0))
        return cls(
            (n_block_rows * bm, n_block_cols * bk),
            (bm, bk),
            row_offsets,
            col_indices.contiguous(),
            row_indices.contiguous(),
            transpose_offsets,
            transpose_block_ids,
        )

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        block_size: int | Sequence[int],
        sparsity: float,
        tied_columns: int = 1,
    ) -> BlockLayout:
        """Layout keeping the ``round((1 - sparsity) * n_units)`` units of largest Frobenius norm
        (at least one unless ``sparsity`` is 1).

        A unit is one block, or with ``tied_columns = t > 1`` the ``t`` blocks of one block
        row whose block columns are ``c, c + K/bk/t, c + 2 K/bk/t, ...`` (the kernel taps of one
        channel block of a convolution's GEMM view), kept or dropped together. Ties are broken
        by unit position (lower row-major index first), so the result is deterministic.
        """
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [M, K], got shape {tuple(weight.shape)}")
        if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool):
            raise TypeError(f"sparsity must be a float in [0, 1], got {sparsity!r}")
        if not 0.0 <= float(sparsity) <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        bm, bk = as_block_size(block_size)
        _check_divisible(tuple(weight.shape), (bm, bk), "weight")
        norms = block_norms(weight.detach(), (bm, bk))
        rows, cols = norms.shape
        if tied_columns < 1 or cols % tied_columns:
            raise ValueError(
                f"tied_columns={tied_columns} must be positive and divide the {cols} block columns"
            )
        unit_norms = (
            norms
            if tied_columns == 1
            else norms.view(rows, tied_columns, cols // tied_columns).pow(2).sum(1).sqrt()
        )
        n_units = unit_norms.numel()
        # At least one unit below sparsity 1: a layer left with no block computes nothing.
        n_keep = round((1.0 - float(sparsity)) * n_units)
        n_keep = max(n_keep, 1) if sparsity < 1 and n_units else n_keep
        order = torch.sort(unit_norms.flatten(), descending=True, stable=True).indices
        flat_mask = torch.zeros(n_units, dtype=torch.bool, device=weight.device)
        flat_mask[order[:n_keep]] = True
        unit_mask = flat_mask.view_as(unit_norms)
        block_mask = unit_mask.unsqueeze(1).expand(rows, tied_columns, -1).reshape(rows, cols)
        return cls.from_block_mask(block_mask, (bm, bk))

    @classmethod
    def from_index_tensors(
        cls,
        shape: Sequence[int],
        block_size: int | Sequence[int],
        row_offsets: torch.Tensor,
        col_indices: torch.Tensor,
    ) -> BlockLayout:
        """Rebuild a layout from the CSR tensors returned by :meth:`index_tensors` (validated)."""
        bm, bk = as_block_size(block_size)
        m, k = (int(s) for s in shape)
        _check_divisible((m, k), (bm, bk), "shape")
        n_block_rows, n_block_cols = m // bm, k // bk
        for name, t in (("row_offsets", row_offsets), ("col_indices", col_indices)):
            if not isinstance(t, torch.Tensor) or t.dim() != 1:
                raise ValueError(f"{name} must be a 1-D integer tensor")
            if t.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
        if row_offsets.numel() != n_block_rows + 1:
            raise ValueError(
                f"row_offsets must have M/bm + 1 = {n_block_rows + 1} entries, "
                f"got {row_offsets.numel()}"
            )
        offsets = row_offsets.long()
        cols = col_indices.long()
        counts = offsets.diff()
        if offsets[0] != 0 or (counts < 0).any() or offsets[-1] != cols.numel():
            raise ValueError(
                "row_offsets must start at 0, be non-decreasing and end at len(col_indices)"
            )
        if cols.numel() and (cols.min() < 0 or cols.max() >= n_block_cols):
            raise ValueError(f"col_indices must lie in [0, K/bk = {n_block_cols})")
        rows = torch.repeat_interleave(torch.arange(n_block_rows, device=cols.device), counts)
        same_row = rows[1:] == rows[:-1]
        if (same_row & (cols[1:] <= cols[:-1])).any():
            raise ValueError("col_indices must be strictly increasing within each block row")
        mask = torch.zeros(n_block_rows, n_block_cols, dtype=torch.bool, device=cols.device)
        mask[rows, cols] = True
        return cls.from_block_mask(mask, (bm, bk))

    # ------------------------------------------------------------------ properties

    @property
    def nnz(self) -> int:
        """Number of stored blocks."""
        return self.col_indices.numel()

    @property
    def block_grid(self) -> tuple[int, int]:
        """``(M / bm, K / bk)``: the number of block rows and block columns."""
        return (self.shape[0] // self.block_size[0], self.shape[1] // self.block_size[1])

    @property
    def n_blocks(self) -> int:
        """Number of blocks in the full grid, stored or not."""
        rows, cols = self.block_grid
        return rows * cols

    @property
    def density(self) -> float:
        """Fraction of blocks stored (``nnz / n_blocks``); 0.0 for an empty grid."""
        return self.nnz / self.n_blocks if self.n_blocks else 0.0

    @property
    def sparsity(self) -> float:
        """``1 - density``."""
        return 1.0 - self.density

    @property
    def device(self) -> torch.device:
        return self.col_indices.device

    @property
    def values_shape(self) -> tuple[int, int, int]:
        """Shape a matching ``values`` tensor must have: ``(nnz, bm, bk)``."""
        return (self.nnz, *self.block_size)

    # ------------------------------------------------------------------ conversions

    def block_mask(self) -> torch.Tensor:
        """Bool ``[M/bm, K/bk]``, True where a block is stored."""
        mask = torch.zeros(self.block_grid, dtype=torch.bool, device=self.device)
        mask[self.row_indices.long(), self.col_indices.long()] = True
        return mask

    def to_blocks(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored blocks of a dense ``[M, K]`` weight as ``[nnz, bm, bk]`` (differentiable)."""
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if tuple(weight.shape) != self.shape:
            raise ValueError(
                f"weight must have the layout's shape {self.shape}, got {tuple(weight.shape)}"
            )
        tiles = _tiles(weight, self.block_size)
        return tiles[self.row_indices.long(), self.col_indices.long()]

    def to_dense(self, values: torch.Tensor) -> torch.Tensor:
        """Dense ``[M, K]`` weight from ``values [nnz, bm, bk]``, zero elsewhere (autograd)."""
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
        if tuple(values.shape) != self.values_shape:
            raise ValueError(
                f"values must have shape (nnz, bm, bk) = {self.values_shape}, "
                f"got {tuple(values.shape)}"
            )
        rows, cols = self.block_grid
        bm, bk = self.block_size
        tiles = values.new_zeros(rows, cols, bm, bk)
        tiles = tiles.index_put((self.row_indices.long(), self.col_indices.long()), values)
        return tiles.permute(0, 2, 1, 3).reshape(self.shape)

    def expand_block_mask(self, block_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Element mask ``[M, K]`` (dtype bool) of a block mask; the layout's own by default."""
        mask = self.block_mask() if block_mask is None else block_mask
        bm, bk = self.block_size
        return mask.repeat_interleave(bm, dim=0).repeat_interleave(bk, dim=1)

    # ------------------------------------------------------------------ storage and devices

    def index_tensors(self) -> dict[str, torch.Tensor]:
        """The CSR tensors that determine this layout, e.g. to register as module buffers."""
        return {"row_offsets": self.row_offsets, "col_indices": self.col_indices}

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """All index tensors in the order the op layer passes them to kernels."""
        return (
            self.row_offsets,
            self.col_indices,
            self.row_indices,
            self.transpose_offsets,
            self.transpose_block_ids,
        )

    def to(self, device: torch.device | str) -> BlockLayout:
        """The same layout with its index tensors on ``device``."""
        return BlockLayout(self.shape, self.block_size, *(t.to(device) for t in self.tensors()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockLayout):
            return NotImplemented
        return (
            self.shape == other.shape
            and self.block_size == other.block_size
            and torch.equal(self.row_offsets.cpu(), other.row_offsets.cpu())
            and torch.equal(self.col_indices.cpu(), other.col_indices.cpu())
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"BlockLayout(shape={self.shape}, block_size={self.block_size}, nnz={self.nnz}, "
            f"density={self.density:.4f}, device={self.device})"
        )


def _check_divisible(shape: tuple[int, ...], block_size: tuple[int, int], name: str) -> None:
    m, k = shape
    bm, bk = block_size
    if m % bm or k % bk:
        raise ValueError(
            f"block_size {block_size} must divide the {name} shape {(m, k)}: "
            f"{m} % {bm} = {m % bm}, {k} % {bk} = {k % bk}"
        )


def _tiles(weight: torch.Tensor, block_size: tuple[int, int]) -> torch.Tensor:
    """View ``[M, K]`` as ``[M/bm, K/bk, bm, bk]``."""
    bm, bk = block_size
    m, k = weight.shape
    return weight.reshape(m // bm, bm, k // bk, bk).permute(0, 2, 1, 3)


def block_norms(weight: torch.Tensor, block_size: tuple[int, int]) -> torch.Tensor:
    """Frobenius norm of every ``bm x bk`` block of ``weight``: ``[M/bm, K/bk]``, float64."""
    return _tiles(weight.double(), block_size).pow(2).sum(dim=(2, 3)).sqrt()
