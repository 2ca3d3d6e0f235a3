"""DGM, dynamic gradient masking: compute only the most useful weight-gradient blocks.

Every ``interval`` iterations the full (weight-sparse) gradient of each sparse layer is
computed and the ``keep_fraction`` of its *stored* blocks with the largest gradient norm is
kept; the other iterations pass that ``grad_block_mask`` to the kernels, which skip the
weight-gradient work of the switched-off blocks and give them an exact zero gradient.

The SparCL release defines the fraction over the whole layer, so at 0.9 weight sparsity its
0.8 setting keeps every stored block and does nothing; here it is over stored blocks. With
``--granularity unstructured`` the units are single stored weights and the mask is applied
to a dense gradient (nothing is skipped; see sparcl.masking).
"""

from __future__ import annotations

import torch
from torch import nn

from sparcl.masking import masked_units


class GradientMasking:
    DEFAULT_KEEP_FRACTION = 0.8  # the paper's settings (SparCL's --dgm_* flags default to them)
    DEFAULT_INTERVAL = 30

    def __init__(
        self,
        model: nn.Module,
        keep_fraction: float = DEFAULT_KEEP_FRACTION,
        interval: int = DEFAULT_INTERVAL,
    ) -> None:
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.layers = masked_units(model)
        self.keep_fraction = keep_fraction
        self.interval = interval
        self.iteration = 0
        self.computed_blocks = 0  # weight-gradient blocks (not units) computed so far
        self.stored_blocks = 0  # weight-gradient blocks a full gradient would have computed
        # Blocks each layer's mask keeps (None: no mask), counted when the mask is made, so
        # that accounting never reads a mask back from the GPU.
        self.kept: list[int | None] = [None] * len(self.layers)

    def refreshing(self) -> bool:
        """Whether the current iteration computes the full gradient to pick a new mask."""
        return self.iteration % self.interval == 0

    def _set(self, index: int, mask: torch.Tensor | None, kept: int | None) -> None:
        self.layers[index].set_grad_mask(mask)
        self.kept[index] = kept

    def _computed(self, index: int) -> int:
        kept = self.kept[index]
        return self.layers[index].n_stored if kept is None else kept

    def before_backward(self) -> None:
        """Call before ``loss.backward()``: a refresh iteration computes every stored block."""
        if self.refreshing():
            for index in range(len(self.layers)):
                self._set(index, None, None)

    @torch.no_grad()
    def after_backward(self) -> None:
        """Call after ``loss.backward()``: account the work, pick masks on refresh iterations."""
        for index, layer in enumerate(self.layers):
            nnz = layer.n_stored
            self.stored_blocks += nnz * layer.blocks_per_unit
            self.computed_blocks += self._computed(index) * layer.blocks_per_unit
            norms = layer.gradient_norms() if self.refreshing() else None
            if norms is not None:
                keep = max(1, round(self.keep_fraction * nnz)) if nnz else 0
                order = torch.sort(norms, descending=True, stable=True).indices
                new_mask = torch.zeros(nnz, dtype=torch.bool, device=norms.device)
                new_mask[order[:keep]] = True
                self._set(index, new_mask, keep)
        self.iteration += 1

    @property
    def gradient_density(self) -> float:
        """Fraction of stored weight-gradient blocks actually computed so far."""
        return self.computed_blocks / self.stored_blocks if self.stored_blocks else 1.0

    def current_density(self) -> float:
        """Fraction of stored blocks the current gradient masks compute."""
        stored = sum(layer.n_stored * layer.blocks_per_unit for layer in self.layers)
        kept = sum(
            self._computed(index) * layer.blocks_per_unit for index, layer in enumerate(self.layers)
        )
        return kept / stored if stored else 1.0

    def reset(self) -> None:
        """Start a new mask cycle (e.g. after a layout change cleared the masks)."""
        self.iteration = 0
        for index in range(len(self.layers)):
            self._set(index, None, None)

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "computed_blocks": self.computed_blocks,
            "stored_blocks": self.stored_blocks,
            "masks": [layer.grad_mask for layer in self.layers],
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.computed_blocks, self.stored_blocks = state["computed_blocks"], state["stored_blocks"]
        if len(state["masks"]) != len(self.layers):
            raise ValueError(
                f"DGM state has {len(state['masks'])} masks for {len(self.layers)} layers"
            )
        for index, mask in enumerate(state["masks"]):
            self._set(index, mask, None if mask is None else int(mask.sum()))
