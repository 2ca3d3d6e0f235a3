"""DGM, dynamic gradient masking: compute only the most useful weight-gradient blocks.

Every ``interval`` iterations the full (weight-sparse) gradient of each sparse layer is
computed and the ``keep_fraction`` of its *stored* blocks with the largest gradient norm is
kept; the other iterations pass that ``grad_block_mask`` to the kernels, which skip the
weight-gradient work of the switched-off blocks and give them an exact zero gradient.

The SparCL release defines the fraction over the whole layer, so at 0.9 weight sparsity its
0.8 setting keeps every stored block and does nothing; here it is over stored blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from sparcl_kernels.nn import BlockSparseWeight


class GradientMasking:
    def __init__(self, model: nn.Module, keep_fraction: float = 0.8, interval: int = 30) -> None:
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.layers = [m for m in model.modules() if isinstance(m, BlockSparseWeight)]
        self.keep_fraction = keep_fraction
        self.interval = interval
        self.iteration = 0
        self.computed_blocks = 0  # weight-gradient blocks computed so far
        self.stored_blocks = 0  # weight-gradient blocks a full gradient would have computed

    def refreshing(self) -> bool:
        """Whether the current iteration computes the full gradient to pick a new mask."""
        return self.iteration % self.interval == 0

    def before_backward(self) -> None:
        """Call before ``loss.backward()``: a refresh iteration computes every stored block."""
        if self.refreshing():
            for layer in self.layers:
                layer.set_grad_block_mask(None)

    @torch.no_grad()
    def after_backward(self) -> None:
        """Call after ``loss.backward()``: account the work, pick masks on refresh iterations."""
        for layer in self.layers:
            nnz = layer.values.shape[0]
            mask = layer.grad_block_mask
            self.stored_blocks += nnz
            self.computed_blocks += nnz if mask is None else int(mask.sum())
            if self.refreshing() and layer.values.grad is not None:
                norms = layer.values.grad.flatten(1).norm(dim=1)
                keep = max(1, round(self.keep_fraction * nnz)) if nnz else 0
                order = torch.sort(norms, descending=True, stable=True).indices
                new_mask = torch.zeros(nnz, dtype=torch.bool, device=norms.device)
                new_mask[order[:keep]] = True
                layer.set_grad_block_mask(new_mask)
        self.iteration += 1

    @property
    def gradient_density(self) -> float:
        """Fraction of stored weight-gradient blocks actually computed so far."""
        return self.computed_blocks / self.stored_blocks if self.stored_blocks else 1.0

    def reset(self) -> None:
        """Start a new mask cycle (e.g. after a layout change cleared the masks)."""
        self.iteration = 0
        for layer in self.layers:
            layer.set_grad_block_mask(None)

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "computed_blocks": self.computed_blocks,
            "stored_blocks": self.stored_blocks,
            "masks": [layer.grad_block_mask for layer in self.layers],
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.computed_blocks, self.stored_blocks = state["computed_blocks"], state["stored_blocks"]
        for layer, mask in zip(self.layers, state["masks"], strict=True):
            layer.set_grad_block_mask(mask)
