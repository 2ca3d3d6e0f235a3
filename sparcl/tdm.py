"""TDM, task-aware dynamic masking: one block mask for the whole run, grown and pruned.

Schedule within every task (SparCL defaults; percentages of each layer's block count):
epoch 0 grows ``p_inter`` (zero-initialised blocks at random inactive positions); every
``delta_k`` epochs after that, up to ``frozen_epoch``, prunes the least important stored
blocks and regrows ``p_intra`` at random -- ``p_inter + p_intra`` at the first of these (so
the density returns to its target) and ``p_intra`` later. Importance of a stored block is
``sum(|w| + lam * |g|)`` over its entries, with ``g`` the layer's latest weight gradient.
Block counts carry their fractional remainders from one update to the next, per layer, so a
layer of 9 blocks moves at the scheduled rates on average (one block every ~11 updates at
1%) instead of never (``round(0.01 * 9)`` is 0); the blocks grown at epoch 0 are exactly the
count pruned back at ``delta_k``. Changes go through the layers' layout-update API: nnz stays
constant where the schedule allows, optimizer state of untouched blocks is kept, the model is
never re-allocated. With
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
        # Per layer: fractional blocks owed by the inter-task grows and by the intra-task
        # swaps, and how many blocks this task's epoch-0 grow added (pruned back at delta_k).
        self.inter_carry = [0.0] * len(self.layers)
        self.intra_carry = [0.0] * len(self.layers)
        self.inter_grown = [0] * len(self.layers)

    @torch.no_grad()
    def begin_epoch(self, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Apply the schedule's layout change for ``epoch`` (task-relative); True if any."""
        prune_fractions, grow_fraction = self.schedule.action(epoch)
        if not any(prune_fractions) and not grow_fraction:
            return False
        for index, layer in enumerate(self.layers):
            n_prune, n_grow = self._counts(index, layer, prune_fractions, grow_fraction)
            if n_prune or n_grow:
                self._update(layer, n_prune, n_grow, optimizer)
        return True

    def _counts(self, index: int, layer, prune_fractions, grow_fraction) -> tuple[int, int]:
        """(blocks to prune, blocks to grow) in layer ``index`` for one scheduled update."""
        n_units = layer.stored_mask().numel()
        if not prune_fractions:  # epoch 0: the inter-task grow
            owed = self.inter_carry[index] + grow_fraction * n_units
            self.inter_grown[index] = int(owed + 1e-9)
            self.inter_carry[index] = owed - self.inter_grown[index]
            return 0, self.inter_grown[index]
        owed = self.intra_carry[index] + prune_fractions[-1] * n_units
        swap = int(owed + 1e-9)
        self.intra_carry[index] = owed - swap
        undo = self.inter_grown[index] if len(prune_fractions) > 1 else 0
        self.inter_grown[index] -= undo
        return min(undo + swap, layer.n_stored), swap

    def _update(self, layer, n_prune: int, n_grow: int, optimizer) -> None:
        stored = layer.stored_mask()
        n_units = stored.numel()
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
        return {
            "generator": self.generator.get_state(),
            "inter_carry": list(self.inter_carry),
            "intra_carry": list(self.intra_carry),
            "inter_grown": list(self.inter_grown),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        for name in ("inter_carry", "intra_carry", "inter_grown"):
            if name in state:  # absent from checkpoints written before carries existed
                setattr(self, name, list(state[name]))
