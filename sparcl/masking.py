"""What TDM and DGM mask, at either granularity: weight blocks or single weights.

``block`` (the default) masks the weight blocks of the block-sparse layers: the mask *is* the
layer's layout, so masked blocks are never multiplied, and gradient masks go to the kernels.
``unstructured`` reproduces the SparCL release: layers stay dense (:class:`MaskedLinear`,
:class:`MaskedConv2d`), an element mask buffer ``weight_mask`` keeps pruned weights at zero
and their gradients are never propagated -- the FLOPs are counted as saved but every one of
them is still executed. It exists so that accuracy can be compared against the authors' way
of training.

Both adapters expose the same *units* view to TDM and DGM: a bool mask over all units, a
score per stored unit (in the flat order of that mask), layout updates through prune ids and
grow positions, and the gradient mask (``grad_mask``: which stored units get a gradient).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparcl_kernels.nn import BlockSparseWeight

GRANULARITIES = ("block", "unstructured")


class BlockUnits:
    """Units are the weight blocks of a block-sparse layer (its layout), or, in an all-taps
    convolution, the ``kh * kw`` blocks of one channel pair kept and dropped together."""

    def __init__(self, layer: BlockSparseWeight) -> None:
        self.layer = layer

    def stored_mask(self) -> Tensor:
        return self.layer.unit_mask().cpu()

    @property
    def blocks_per_unit(self) -> int:
        return self.layer.tied_columns

    @property
    def n_stored(self) -> int:
        return self.layer.values.shape[0] // self.blocks_per_unit

    def _per_unit(self, per_block: Tensor) -> Tensor:
        """Sums a per-block quantity ``[nnz]`` over each stored unit's blocks."""
        if self.blocks_per_unit == 1:
            return per_block
        return per_block[self.layer.unit_block_ids()].sum(1)

    def _abs_sum(self, tensor: Tensor) -> Tensor:
        return self._per_unit(tensor.detach().abs().flatten(1).sum(1))

    def importance(self, lam: float) -> Tensor:
        """``sum |w| + lam * |g|`` per stored unit, ``g`` the latest weight gradient."""
        score = self._abs_sum(self.layer.values)
        if self.layer.values.grad is not None:
            score = score + lam * self._abs_sum(self.layer.values.grad)
        return score

    def gradient_norms(self) -> Tensor | None:
        grad = self.layer.values.grad
        return None if grad is None else self._per_unit(grad.flatten(1).pow(2).sum(1)).sqrt()

    def update(self, prune: Tensor | None, grow: Tensor, optimizer) -> None:
        """Prune stored units ``prune`` (ids) and grow the positions set in ``grow``."""
        if self.blocks_per_unit > 1:
            if prune is not None:
                prune = self.layer.unit_block_ids()[prune.to(self.layer.block_mask.device)]
                prune = prune.flatten()
            rows, cols = self.layer.layout.block_grid
            grow = grow.unsqueeze(1).expand(rows, self.blocks_per_unit, -1).reshape(rows, cols)
        self.layer.update_blocks(prune=prune, grow=grow, optimizer=optimizer)

    @property
    def grad_mask(self) -> Tensor | None:
        blocks = self.layer.grad_block_mask
        if blocks is None or self.blocks_per_unit == 1:
            return blocks
        return blocks[self.layer.unit_block_ids()[:, 0]]

    def set_grad_mask(self, grad_mask: Tensor | None) -> None:
        if grad_mask is not None and self.blocks_per_unit > 1:
            if grad_mask.dtype != torch.bool or tuple(grad_mask.shape) != (self.n_stored,):
                raise ValueError(f"grad_mask must be bool of shape ({self.n_stored},)")
            ids = self.layer.unit_block_ids()
            blocks = torch.zeros(self.layer.values.shape[0], dtype=torch.bool, device=ids.device)
            blocks[ids[grad_mask.to(ids.device)].flatten()] = True
            grad_mask = blocks
        self.layer.set_grad_block_mask(grad_mask)


class ElementMasked:
    """A dense layer whose weights outside ``weight_mask`` are pruned: they stay exactly zero.

    ``weight_mask`` (a buffer, saved with the weights) says which weights are stored;
    ``grad_mask`` (DGM's, same shape, or None) which of those get a gradient. The forward
    multiplies the whole dense weight, as the release does; the backward gives pruned
    weights, and those ``grad_mask`` switches off, an exact zero gradient.
    """

    weight: nn.Parameter
    weight_mask: Tensor
    grad_mask: Tensor | None

    def _init_mask(self, mask: Tensor) -> None:
        self.register_buffer("weight_mask", mask)
        self.grad_mask = None

    def trainable_weight(self) -> Tensor:
        """``weight`` in value; its gradient flows only to the stored, unmasked weights."""
        flows = self.weight_mask if self.grad_mask is None else self.weight_mask & self.grad_mask
        return torch.where(flows, self.weight, self.weight.detach())

    @classmethod
    def from_dense(cls, dense: nn.Module, mask: Tensor) -> nn.Module:
        """The masked twin of ``dense``, sharing its parameters (optimizers keep working)."""
        masked = cls._empty_like(dense)
        masked.weight, masked.bias = dense.weight, dense.bias
        masked.train(dense.training)
        masked._init_mask(mask)
        return masked


class MaskedLinear(ElementMasked, nn.Linear):
    """``nn.Linear`` with pruned weights (see :class:`ElementMasked`)."""

    @classmethod
    def _empty_like(cls, dense: nn.Linear) -> MaskedLinear:
        return cls(dense.in_features, dense.out_features, dense.bias is not None, device="meta")

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.trainable_weight(), self.bias)


class MaskedConv2d(ElementMasked, nn.Conv2d):
    """``nn.Conv2d`` with pruned weights (see :class:`ElementMasked`)."""

    @classmethod
    def _empty_like(cls, dense: nn.Conv2d) -> MaskedConv2d:
        return cls(
            dense.in_channels,
            dense.out_channels,
            dense.kernel_size,
            dense.stride,
            dense.padding,
            dense.dilation,
            dense.groups,
            dense.bias is not None,
            dense.padding_mode,
            device="meta",
        )

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.trainable_weight(), self.bias)


class ElementUnits:
    """Units are single weights of a masked dense layer."""

    blocks_per_unit = 1

    def __init__(self, module: ElementMasked) -> None:
        self.module = module

    def stored_mask(self) -> Tensor:
        return self.module.weight_mask.cpu()

    @property
    def n_stored(self) -> int:
        return int(self.module.weight_mask.sum())

    def _stored(self, tensor: Tensor) -> Tensor:
        return tensor.detach()[self.module.weight_mask]

    def importance(self, lam: float) -> Tensor:
        weight = self.module.weight
        score = self._stored(weight).abs()
        if weight.grad is not None:
            score = score + lam * self._stored(weight.grad).abs()
        return score

    def gradient_norms(self) -> Tensor | None:
        grad = self.module.weight.grad
        return None if grad is None else self._stored(grad).abs()

    @torch.no_grad()
    def update(self, prune: Tensor | None, grow: Tensor, optimizer) -> None:
        mask = self.module.weight_mask
        flat = mask.view(-1)
        grown = grow.to(mask.device).view(-1)
        if (flat & grown).any():
            raise ValueError("grow names weights that are already stored")
        changed = grown.clone()
        if prune is not None and prune.numel():
            pruned = flat.nonzero().squeeze(1)[prune.to(mask.device)]
            flat[pruned] = False
            changed[pruned] = True
        flat |= grown
        weight = self.module.weight
        weight.view(-1)[changed] = 0.0  # pruned weights vanish, grown ones start at zero
        if optimizer is not None and weight in optimizer.state:
            for value in optimizer.state[weight].values():
                if isinstance(value, Tensor) and value.shape == weight.shape:
                    value.view(-1)[changed] = 0.0
        weight.grad = None
        self.module.grad_mask = None

    @property
    def grad_mask(self) -> Tensor | None:
        full = self.module.grad_mask
        return None if full is None else full[self.module.weight_mask]

    def set_grad_mask(self, grad_mask: Tensor | None) -> None:
        if grad_mask is None:
            self.module.grad_mask = None
            return
        if grad_mask.dtype != torch.bool or tuple(grad_mask.shape) != (self.n_stored,):
            raise ValueError(f"grad_mask must be bool of shape ({self.n_stored},)")
        full = torch.zeros_like(self.module.weight_mask)
        full[self.module.weight_mask] = grad_mask.to(full.device)
        self.module.grad_mask = full


@torch.no_grad()
def attach_element_masks(model: nn.Module, sparsity: float, include: Iterable[str]) -> list[str]:
    """Replace the matching ``nn.Conv2d``/``nn.Linear`` layers by masked ones, in place.

    Each selected layer keeps its ``round((1 - sparsity) * numel)`` largest-magnitude weights
    and shares its parameters with the layer it replaces; the others are zeroed, and stay at
    zero under any optimizer without weight decay. Returns the names of the masked layers.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    patterns = tuple(include)
    masked = []
    for name, module in list(model.named_modules()):
        if type(module) not in (nn.Conv2d, nn.Linear):
            continue
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            continue
        weight = module.weight
        keep = round((1.0 - sparsity) * weight.numel())
        order = torch.sort(weight.abs().flatten(), descending=True, stable=True).indices
        mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
        mask[order[:keep]] = True
        weight.mul_(mask.view_as(weight))
        kind = MaskedConv2d if isinstance(module, nn.Conv2d) else MaskedLinear
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, kind.from_dense(module, mask.view_as(weight)))
        masked.append(name)
    return masked


def masked_units(model: nn.Module) -> list[BlockUnits | ElementUnits]:
    """The maskable layers of ``model`` in module order, as TDM/DGM units."""
    units: list[BlockUnits | ElementUnits] = []
    for module in model.modules():
        if isinstance(module, BlockSparseWeight):
            units.append(BlockUnits(module))
        elif isinstance(module, ElementMasked):
            units.append(ElementUnits(module))
    return units


def unit_density(module: nn.Module) -> float | None:
    """Stored fraction of a maskable layer's weights (None for a plain dense layer)."""
    if isinstance(module, BlockSparseWeight):
        return module.layout.density
    if isinstance(module, ElementMasked):
        return float(module.weight_mask.float().mean())
    return None
