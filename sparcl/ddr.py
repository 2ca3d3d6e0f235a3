"""DDR, dynamic data removal: drop the current task's least forgettable examples.

A forgetting event is an example going from correctly to incorrectly classified between two
presentations (judged on the training step's own predictions, before the optimizer step).
Examples never classified correctly count as maximally forgettable. At each removal epoch
``remove_fraction`` of the task's original examples with the fewest events are removed for
the rest of the task (ties broken by a seeded random order), and the statistics start over,
as in the SparCL release: the next removal judges the survivors on the epochs since this one,
not on events from early training that every example went through.
"""

from __future__ import annotations

import torch


class DataRemoval:
    DEFAULT_FRACTION = 0.075  # the paper's settings (SparCL's --ddr_* flags default to them)
    DEFAULT_EPOCHS = (5, 10, 15, 20)

    def __init__(
        self,
        n_examples: int,
        remove_fraction: float = DEFAULT_FRACTION,
        removal_epochs: tuple[int, ...] = DEFAULT_EPOCHS,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= remove_fraction < 1.0:
            raise ValueError(f"remove_fraction must be in [0, 1), got {remove_fraction}")
        self.n_examples = n_examples
        self.remove_fraction = remove_fraction
        self.removal_epochs = tuple(removal_epochs)
        self.generator = torch.Generator().manual_seed(seed)
        self.forgetting_events = torch.zeros(n_examples, dtype=torch.long)
        self.last_correct = torch.zeros(n_examples, dtype=torch.bool)
        self.ever_learned = torch.zeros(n_examples, dtype=torch.bool)
        self.active = torch.ones(n_examples, dtype=torch.bool)

    def record(self, positions: torch.Tensor, correct: torch.Tensor) -> None:
        """Predictions of one step: ``positions`` index the task's examples."""
        forgotten = self.last_correct[positions] & ~correct
        self.forgetting_events.index_add_(0, positions, forgotten.long())
        self.last_correct[positions] = correct
        self.ever_learned[positions] |= correct

    def begin_epoch(self, epoch: int) -> int:
        """Remove examples if ``epoch`` is a removal epoch; returns how many were removed."""
        if epoch not in self.removal_epochs:
            return 0
        count = min(round(self.remove_fraction * self.n_examples), int(self.active.sum()))
        if count == 0:
            return 0
        events = self.forgetting_events.double()
        events[~self.ever_learned] = float("inf")
        candidates = self.active.nonzero().squeeze(1)
        # Seeded tie-break: shuffle, then a stable sort by events keeps the shuffled order.
        shuffled = candidates[torch.randperm(len(candidates), generator=self.generator)]
        order = torch.sort(events[shuffled], stable=True).indices
        self.active[shuffled[order[:count]]] = False
        self.forgetting_events.zero_()
        self.last_correct.zero_()
        self.ever_learned.zero_()
        return count

    def active_positions(self) -> torch.Tensor:
        return self.active.nonzero().squeeze(1)

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "forgetting_events": self.forgetting_events,
            "last_correct": self.last_correct,
            "ever_learned": self.ever_learned,
            "active": self.active,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.forgetting_events = state["forgetting_events"]
        self.last_correct, self.ever_learned = state["last_correct"], state["ever_learned"]
        self.active = state["active"]
