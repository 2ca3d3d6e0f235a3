"""What TDM and DGM mask, at either granularity: weight blocks or single weights.

``block`` (the default) masks the weight blocks of the block-sparse layers: the mask *is* the
layer's layout, so masked blocks are never multiplied, and gradient masks go to the kernels.
``unstructured`` reproduces the SparCL release: layers stay dense ``nn.Conv2d``/``nn.Linear``,
an element mask buffer ``weight_mask`` zeroes pruned weights and a gradient hook zeroes their
gradients -- the FLOPs are counted as saved but every one of them is still executed. It exists
so that accuracy can be compared against the authors' way of training.

Both adapters expose the same *units* view to TDM and DGM: a bool mask over all units, a
score per stored unit (in the flat order of that mask), layout updates through prune ids and
grow positions, and a gradient keep-mask over the stored units.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from sparcl_kernels.nn import BlockSparseWeight

GRANULARITIES = ("block", "unstructured")


class BlockUnits:
    """Units are the weight blocks of a block-sparse layer (its layout)."""

    def __init__(self, layer: BlockSparseWeight) -> None:
        self.layer = layer

    def stored_mask(self) -> Tensor:
        return self.layer.layout.block_mask().cpu()

    @property
    def n_stored(self) -> int:
        return self.layer.values.shape[0]

    def _per_unit(self, tensor: Tensor) -> Tensor:
        return tensor.detach().abs().flatten(1).sum(1)

    def importance(self, lam: float) -> Tensor:
        """``sum |w| + lam * |g|`` per stored block, ``g`` the latest weight gradient."""
        score = self._per_unit(self.layer.values)
        if self.layer.values.grad is not None:
            score = score + lam * self._per_unit(self.layer.values.grad)
        return score

    def gradient_norms(self) -> Tensor | None:
        grad = self.layer.values.grad
        return None if grad is None else grad.flatten(1).norm(dim=1)

    def update(self, prune: Tensor | None, grow: Tensor, optimizer) -> None:
        """Prune stored units ``prune`` (ids) and grow the positions set in ``grow``."""
        self.layer.update_blocks(prune=prune, grow=grow, optimizer=optimizer)

    @property
    def grad_mask(self) -> Tensor | None:
        return self.layer.grad_block_mask

    def set_grad_mask(self, keep: Tensor | None) -> None:
        self.layer.set_grad_block_mask(keep)


def _mask_gradient(module: nn.Module, grad: Tensor) -> Tensor:
    mask = module.weight_mask
    if module.weight_grad_keep is not None:
        mask = mask & module.weight_grad_keep
    return grad * mask


class ElementUnits:
    """Units are single weights of a dense layer carrying a ``weight_mask`` buffer."""

    def __init__(self, module: nn.Module) -> None:
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
        self.module.weight_grad_keep = None

    @property
    def grad_mask(self) -> Tensor | None:
        keep = self.module.weight_grad_keep
        return None if keep is None else keep[self.module.weight_mask]

    def set_grad_mask(self, keep: Tensor | None) -> None:
        if keep is None:
            self.module.weight_grad_keep = None
            return
        if keep.dtype != torch.bool or tuple(keep.shape) != (self.n_stored,):
            raise ValueError(f"gradient keep-mask must be bool of shape ({self.n_stored},)")
        full = torch.zeros_like(self.module.weight_mask)
        full[self.module.weight_mask] = keep.to(full.device)
        self.module.weight_grad_keep = full


@torch.no_grad()
def attach_element_masks(model: nn.Module, sparsity: float, include: Iterable[str]) -> list[str]:
    """Give the matching ``nn.Conv2d``/``nn.Linear`` layers magnitude element masks, in place.

    Each selected layer keeps its ``round((1 - sparsity) * numel)`` largest-magnitude weights;
    the others are zeroed, and a gradient hook keeps them at zero under any optimizer without
    weight decay. Returns the names of the masked layers.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    patterns = tuple(include)
    masked = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            continue
        weight = module.weight
        keep = round((1.0 - sparsity) * weight.numel())
        order = torch.sort(weight.abs().flatten(), descending=True, stable=True).indices
        mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
        mask[order[:keep]] = True
        module.register_buffer("weight_mask", mask.view_as(weight))
        module.weight_grad_keep = None
        weight.mul_(module.weight_mask)
        weight.register_hook(lambda grad, module=module: _mask_gradient(module, grad))
        masked.append(name)
    return masked


def masked_units(model: nn.Module) -> list[BlockUnits | ElementUnits]:
    """The maskable layers of ``model`` in module order, as TDM/DGM units."""
    units: list[BlockUnits | ElementUnits] = []
    for module in model.modules():
        if isinstance(module, BlockSparseWeight):
            units.append(BlockUnits(module))
        elif isinstance(getattr(module, "weight_mask", None), Tensor):
            units.append(ElementUnits(module))
    return units


def unit_density(module: nn.Module) -> float | None:
    """Stored fraction of a maskable layer's weights (None for a plain dense layer)."""
    if isinstance(module, BlockSparseWeight):
        return module.layout.density
    mask = getattr(module, "weight_mask", None)
    return float(mask.float().mean()) if isinstance(mask, Tensor) else None
