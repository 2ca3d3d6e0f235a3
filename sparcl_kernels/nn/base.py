"""What every block-sparse layer shares: compressed weight, layout buffers, layout updates.

A layer's only weight Parameter is ``values [nnz, bm, bk]``. Its layout lives in buffers: the
persistent ``block_mask`` (fixed shape, so ``state_dict`` round-trips even after nnz changes)
and non-persistent index tensors derived from it, which ``module.to(device)`` moves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sparcl_kernels.layout import BlockLayout
from sparcl_kernels.ops import check_grad_block_mask


class _Required:
    def __repr__(self) -> str:
        return "<required>"


# ``optimizer`` of a layout change has no default: left out, a grown block silently inherited
# another block's Adam moments or momentum and moved on a zero gradient.
REQUIRED = _Required()

_INDEX_BUFFERS = (
    "row_offsets",
    "col_indices",
    "row_indices",
    "transpose_offsets",
    "transpose_block_ids",
)


class BlockSparseWeight(nn.Module):
    """Base of the sparse layers: holds ``values`` and the layout of a 2-D ``[M, K]`` weight."""

    values: nn.Parameter
    block_mask: Tensor
    tied_columns: int = 1  # block columns per unit (see unit_grid)

    def _init_block_sparse(
        self,
        weight_2d: Tensor,
        block_size: int | Sequence[int],
        sparsity: float | None = None,
        layout: BlockLayout | None = None,
        tied_columns: int = 1,
    ) -> None:
        self.tied_columns = tied_columns
        if layout is None:
            layout = BlockLayout.from_dense(weight_2d, block_size, sparsity, tied_columns)
        self.weight_shape = layout.shape
        self.block_size = layout.block_size
        self.values = nn.Parameter(layout.to_blocks(weight_2d.detach()).clone())
        self._store_layout(layout)
        self.grad_block_mask: Tensor | None = None
        self._register_geometry()

    def _store_layout(self, layout: BlockLayout) -> None:
        self._check_tied(layout.block_mask())
        self.register_buffer("block_mask", layout.block_mask())
        for name, tensor in zip(_INDEX_BUFFERS, layout.tensors(), strict=True):
            self.register_buffer(name, tensor, persistent=False)

    def rederive_layout(self) -> None:
        """Re-derive the index buffers from the ``block_mask`` buffer, after something wrote
        that buffer directly (a distributed broadcast, ``copy_``): the index buffers are not
        in the state dict and would otherwise describe the old layout."""
        layout = BlockLayout.from_block_mask(self.block_mask, self.block_size)
        if layout.values_shape != tuple(self.values.shape):
            raise ValueError(
                f"{type(self).__name__}: block_mask stores {layout.nnz} blocks but values has "
                f"{self.values.shape[0]}; write both, or use set_block_mask"
            )
        self._store_layout(layout)
        self.grad_block_mask = None

    @property
    def layout(self) -> BlockLayout:
        """The current :class:`BlockLayout` (a view of this module's buffers)."""
        return BlockLayout(
            self.weight_shape,
            self.block_size,
            *(getattr(self, name) for name in _INDEX_BUFFERS),
        )

    # ------------------------------------------------------------------ units
    # A unit is what a layout change keeps or drops at once: one block, or the
    # ``tied_columns`` blocks of one block row at block columns c, c + K/bk/t, ... (an all-taps
    # convolution ties the kh * kw taps of a channel block).

    @property
    def unit_grid(self) -> tuple[int, int]:
        """Shape of :meth:`unit_mask`: (block rows, block columns / ``tied_columns``)."""
        rows, cols = self.layout.block_grid
        return rows, cols // self.tied_columns

    def _check_tied(self, block_mask: Tensor) -> None:
        if self.tied_columns == 1:
            return
        rows, cols = block_mask.shape
        tied = block_mask.view(rows, self.tied_columns, cols // self.tied_columns)
        if not bool((tied == tied[:, :1]).all()):
            raise ValueError(
                f"{type(self).__name__}: this layer ties {self.tied_columns} blocks per unit "
                "(block_taps='all': the kernel taps of a channel block are stored together); "
                "the block mask stores some of a unit's blocks and not others"
            )

    def unit_mask(self) -> Tensor:
        """Bool ``unit_grid`` mask of the stored units."""
        rows, cols = self.layout.block_grid
        return self.block_mask.view(rows, self.tied_columns, cols // self.tied_columns)[:, 0]

    def unit_block_ids(self) -> Tensor:
        """``[stored units, tied_columns]`` ids (into ``values``) of each stored unit's blocks,
        units in row-major order of :meth:`unit_mask`."""
        layout = self.layout
        rows, cols = layout.block_grid
        ids = torch.full((rows, cols), -1, dtype=torch.long, device=self.block_mask.device)
        ids[layout.row_indices.long(), layout.col_indices.long()] = torch.arange(
            layout.nnz, device=ids.device
        )
        per_unit = ids.view(rows, self.tied_columns, cols // self.tied_columns).permute(0, 2, 1)
        return per_unit[self.unit_mask()]

    @property
    def sparsity(self) -> float:
        """Fraction of weight blocks not stored."""
        return self.layout.sparsity

    def dense_weight_2d(self) -> Tensor:
        """The ``[M, K]`` GEMM-view weight, zeros outside stored blocks (differentiable)."""
        return self.layout.to_dense(self.values)

    def set_grad_block_mask(self, grad_block_mask: Tensor | None) -> None:
        """Restrict the weight gradient to stored blocks where ``grad_block_mask`` is True.

        ``None`` computes the gradient of every stored block. Blocks switched off get an exact
        zero gradient and cost no weight-gradient work. Reset by every layout change.
        """
        if grad_block_mask is not None:
            check_grad_block_mask(grad_block_mask, self.values.shape[0], type(self).__name__)
            grad_block_mask = grad_block_mask.to(self.values.device)
        self.grad_block_mask = grad_block_mask

    # ------------------------------------------------------------------ layout updates

    def _check_optimizer(self, optimizer: object, method: str) -> None:
        if optimizer is REQUIRED:
            raise TypeError(
                f"{type(self).__name__}.{method}: pass optimizer= the optimizer that holds state "
                "for this layer's values (its momentum / moments move with their blocks), or "
                "optimizer=None if none does; without it a grown block would keep another "
                "block's optimizer state"
            )
        if optimizer is None:
            return
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"{type(self).__name__}.{method}: optimizer must be a torch.optim.Optimizer "
                f"or None, got {type(optimizer).__name__}"
            )
        if not any(p is self.values for g in optimizer.param_groups for p in g["params"]):
            raise ValueError(
                f"{type(self).__name__}.{method}: the optimizer does not optimise this "
                "layer's values (pass the one that does, or optimizer=None)"
            )

    @torch.no_grad()
    def set_block_mask(
        self, block_mask: Tensor, *, optimizer: torch.optim.Optimizer | _Required | None = REQUIRED
    ) -> None:
        """Switch to a new set of stored blocks, in place.

        Blocks stored before and after keep their values and their ``optimizer`` state (any
        per-parameter state tensor shaped like ``values``: SGD momentum, Adam moments) bit for
        bit. Newly stored blocks start at zero with zeroed state. ``optimizer`` must be given:
        the optimizer whose state for ``values`` moves with the blocks, or ``None`` when no
        optimizer holds any (a ``TypeError`` otherwise: the layer cannot see an optimizer's
        state, and stale state on grown blocks is a silent wrong answer). When the number of
        stored blocks is unchanged, ``values`` and the state tensors keep their storage (no
        re-allocation). The gradient and the grad block mask are cleared.
        """
        self._check_optimizer(optimizer, "set_block_mask")
        if not isinstance(block_mask, Tensor) or block_mask.dtype != torch.bool:
            raise TypeError("block_mask must be a bool tensor")
        old = self.layout
        if tuple(block_mask.shape) != old.block_grid:
            raise ValueError(
                f"block_mask must have shape {old.block_grid}, got {tuple(block_mask.shape)}"
            )
        self._check_tied(block_mask)  # before anything moves
        new = BlockLayout.from_block_mask(block_mask.to(old.device), self.block_size)
        old_ids = torch.full(old.block_grid, -1, dtype=torch.long, device=old.device)
        old_ids[old.row_indices.long(), old.col_indices.long()] = torch.arange(
            old.nnz, device=old.device
        )
        source = old_ids[new.row_indices.long(), new.col_indices.long()]
        kept = source >= 0

        def remap(tensor: Tensor) -> Tensor:
            moved = tensor.new_zeros((new.nnz, *tensor.shape[1:]))
            moved[kept] = tensor[source[kept]]
            if moved.shape == tensor.shape:
                return tensor.copy_(moved)
            return moved

        if optimizer is not None and self.values in optimizer.state:
            state = optimizer.state[self.values]
            for key, value in state.items():
                if isinstance(value, Tensor) and value.shape == self.values.shape:
                    state[key] = remap(value)
        # Through detach(), which shares the version counter: an in-place remap bumps
        # values._version, which is what caches of the blocks (the CPU backend's transposed
        # copy) key on; writes through .data would leave them stale.
        self.values.data = remap(self.values.detach())
        self.values.grad = None
        self.grad_block_mask = None
        self._store_layout(new)

    def update_blocks(
        self,
        prune: Tensor | None = None,
        grow: Tensor | None = None,
        *,
        optimizer: torch.optim.Optimizer | _Required | None = REQUIRED,
    ) -> None:
        """Prune stored blocks and grow new ones in one layout change.

        Args:
            prune: stored-block ids (int tensor) or a bool mask over the ``nnz`` stored blocks.
            grow: bool ``[M/bm, K/bk]`` mask of block positions to add (must be unstored) or
                an int tensor ``[g, 2]`` of (block row, block col) positions.
            optimizer: whose state for ``values`` is remapped, or ``None``; required (see
                :meth:`set_block_mask`).
        """
        self._check_optimizer(optimizer, "update_blocks")
        layout = self.layout
        mask = layout.block_mask()
        if prune is not None:
            ids = prune.nonzero().squeeze(1) if prune.dtype == torch.bool else prune.long()
            if prune.dtype == torch.bool and prune.shape != (layout.nnz,):
                raise ValueError(f"prune mask must have shape ({layout.nnz},)")
            if ids.numel() and (ids.min() < 0 or ids.max() >= layout.nnz):
                raise ValueError(f"prune ids must lie in [0, nnz = {layout.nnz})")
            mask[layout.row_indices[ids].long(), layout.col_indices[ids].long()] = False
        if grow is not None:
            positions = grow.nonzero() if grow.dtype == torch.bool else grow.long().view(-1, 2)
            positions = positions.to(mask.device)
            if positions.numel() and layout.block_mask()[positions[:, 0], positions[:, 1]].any():
                raise ValueError("grow names block positions that are already stored")
            mask[positions[:, 0], positions[:, 1]] = True
        self.set_block_mask(mask, optimizer=optimizer)

    # ------------------------------------------------------------------ state dict

    def geometry(self) -> tuple[int, ...]:
        """What fixes the meaning of ``values``: (kind, out, in, kernel_h, kernel_w, bm, bk,
        taps tied: 1 for an all-taps convolution, else 0).

        Kept in the persistent ``geometry`` buffer and checked on load, as size mismatches
        are for dense modules: two layers with equal ``values`` shapes can mean different
        weights (a 3x3 conv over 16 channels and a 1x1 conv over 144).
        """
        raise NotImplementedError

    def _register_geometry(self) -> None:
        self.register_buffer("geometry_code", torch.tensor(self.geometry(), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "geometry_code")
        if saved is not None:
            # Codes saved before the tap policy was recorded have 7 entries: per-tap blocks.
            code = _padded_geometry(saved.tolist())
            if code != self.geometry():
                raise RuntimeError(
                    f"Error(s) in loading state_dict for {type(self).__name__}: the saved "
                    f"layer's geometry {_describe_geometry(code)} differs from this layer's "
                    f"{_describe_geometry(self.geometry())}"
                )
        # Absent (saved before the geometry was recorded) or checked: block_mask and values
        # shapes are still checked by the default loader.
        state_dict[prefix + "geometry_code"] = self.geometry_code
        # The saved layout may store a different number of blocks: adopt it before the
        # default loader copies `values` (whose shape follows nnz).
        mask = state_dict.get(prefix + "block_mask")
        if isinstance(mask, Tensor) and tuple(mask.shape) == self.layout.block_grid:
            layout = BlockLayout.from_block_mask(mask.to(self.block_mask.device), self.block_size)
            changed = not torch.equal(mask.to(self.block_mask.device), self.block_mask)
            if changed and prefix + "values" not in state_dict:
                # Adopting the layout would leave `values` uninitialised or on the wrong blocks.
                raise RuntimeError(
                    f"Error(s) in loading state_dict for {type(self).__name__}: "
                    f"'{prefix}block_mask' is another layout ({layout.nnz} stored blocks, this "
                    f"layer {self.values.shape[0]}) and '{prefix}values' is missing: a layout "
                    "change needs its values"
                )
            self._store_layout(layout)
            if self.values.shape != layout.values_shape:
                self.values.data = self.values.data.new_empty(layout.values_shape)
            self.grad_block_mask = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _sparse_repr(self) -> str:
        return (
            f"block_size={self.block_size}, sparsity={self.sparsity:.3f}, "
            f"nnz_blocks={self.values.shape[0]}"
        )


_GEOMETRY_KINDS = ("SparseLinear", "SparseConv2d")


def _padded_geometry(code) -> tuple[int, ...]:
    code = tuple(int(v) for v in code)
    return (*code, 0) if len(code) == 7 else code


def _describe_geometry(code) -> str:
    code = _padded_geometry(code)
    if len(code) != 8:
        return f"code {list(code)}"
    kind, rows, cols, kh, kw, bm, bk, tied = code
    name = _GEOMETRY_KINDS[kind] if 0 <= kind < len(_GEOMETRY_KINDS) else f"kind {kind}"
    taps = ", block_taps='all'" if tied else ""
    return f"{name}(out={rows}, in={cols}, kernel=({kh}, {kw}), block_size=({bm}, {bk}){taps})"
