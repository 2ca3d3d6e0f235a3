"""TDM, task-aware dynamic masking: one block mask for the whole run, grown and pruned.

Schedule within every task (SparCL defaults; percentages of each layer's block count):
epoch 0 grows ``p_inter`` (zero-initialised blocks at random inactive positions); every
``delta_k`` epochs after that, up to ``frozen_epoch``, prunes the least important stored
blocks and regrows ``p_intra`` at random -- ``p_inter + p_intra`` at the first of these (so
the density returns to its target) and ``p_intra`` later. Importance of a stored block is
``sum(|w| + lam * |g|)`` over its entries, with ``g`` the layer's latest weight gradient.
Changes go through the layers' layout-update API: nnz stays constant where the schedule
allows, optimizer state of untouched blocks is kept, the model is never re-allocated. With
``--granularity unstructured`` the same schedule runs over single weights of masked dense
layers (see sparcl.masking).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparcl.masking import masked_units


@dataclass(frozen=True)
class TdmSchedule:
    p_inter: float = 0.01
    p_intra: float = 0.01
    delta_k: int = 5
    lam: float = 0.5
    frozen_epoch: int = 45

    def action(self, epoch: int) -> tuple[tuple[float, ...], float]:
        """(prune fractions, grow fraction) of the layer's blocks at the start of ``epoch``.

        The prune fractions are rounded to block counts one by one, exactly as the grows they
        undo, so that a layer's density returns to its target whatever its size.
        """
        if epoch == 0:
            return (), self.p_inter
        if epoch % self.delta_k or epoch >= self.frozen_epoch:
            return (), 0.0
        if epoch == self.delta_k:
            return (self.p_inter, self.p_intra), self.p_intra
        return (self.p_intra,), self.p_intra


class TaskAwareMasking:
    def __init__(self, model: nn.Module, schedule: TdmSchedule, seed: int = 0) -> None:
        self.layers = masked_units(model)
        self.schedule = schedule
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def begin_epoch(self, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Apply the schedule's layout change for ``epoch`` (task-relative); True if any."""
        prune_fractions, grow_fraction = self.schedule.action(epoch)
        if not any(prune_fractions) and not grow_fraction:
            return False
        for layer in self.layers:
            self._update(layer, prune_fractions, grow_fraction, optimizer)
        return True

    def _update(self, layer, prune_fractions, grow_fraction, optimizer) -> None:
        stored = layer.stored_mask()
        n_units = stored.numel()
        n_prune = min(sum(round(p * n_units) for p in prune_fractions), layer.n_stored)
        n_grow = round(grow_fraction * n_units)
        prune = None
        pruned_positions = torch.zeros(n_units, dtype=torch.bool)
        if n_prune:
            scores = layer.importance(self.schedule.lam).cpu()
            prune = torch.sort(scores, stable=True).indices[:n_prune]
            pruned_positions[stored.flatten().nonzero().squeeze(1)[prune]] = True
        # Regrow at random among units that are neither stored nor just pruned.
        candidates = (~stored.flatten() & ~pruned_positions).nonzero().squeeze(1)
        chosen = candidates[torch.randperm(len(candidates), generator=self.generator)[:n_grow]]
        grow = torch.zeros(n_units, dtype=torch.bool)
        grow[chosen] = True
        layer.update(prune, grow.view(stored.shape), optimizer)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
