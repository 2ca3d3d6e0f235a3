"""Reservoir-sampling rehearsal buffer over every presented example, vectorised."""

from __future__ import annotations

import torch


class ReservoirBuffer:
    """Keeps a uniform sample of all examples offered so far (Vitter's algorithm R).

    Stores non-augmented inputs, labels, the logits of the step that saw them and task ids.
    All randomness comes from the buffer's own generator, so it is reproducible and can be
    checkpointed with :meth:`state_dict`.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"buffer size must be >= 0, got {size}")
        self.size = size
        self.seen = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.inputs: torch.Tensor | None = None
        self.labels = torch.empty(0, dtype=torch.long)
        self.logits: torch.Tensor | None = None
        self.task_ids = torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return min(self.seen, self.size)

    def is_empty(self) -> bool:
        return len(self) == 0

    def add(
        self, inputs: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, task: int
    ) -> None:
        """Offer a batch; each example lands in a slot with the reservoir probability."""
        n = inputs.shape[0]
        if self.size == 0 or n == 0:
            self.seen += n
            return
        if self.inputs is None:
            self.inputs = inputs.new_zeros((self.size, *inputs.shape[1:]))
            self.labels = torch.zeros(self.size, dtype=torch.long)
            self.logits = logits.new_zeros((self.size, *logits.shape[1:]))
            self.task_ids = torch.zeros(self.size, dtype=torch.long)
        positions = torch.arange(self.seen, self.seen + n)
        draws = (
            torch.rand(n, generator=self.generator, dtype=torch.float64) * (positions + 1)
        ).long()
        slots = torch.where(positions < self.size, positions, draws)
        keep = slots < self.size
        # Several examples of one batch may draw the same slot: the later one wins, as in a
        # sequential reservoir.
        order = torch.arange(n)
        last = torch.full((self.size,), -1, dtype=torch.long)
        last.scatter_reduce_(0, slots[keep], order[keep], reduce="amax")
        winners = last[last >= 0]
        targets = slots[winners]
        self.inputs[targets] = inputs[winners].to(self.inputs.dtype)
        self.labels[targets] = labels[winners]
        self.logits[targets] = logits[winners].detach().to(self.logits.dtype)
        self.task_ids[targets] = task
        self.seen += n

    def sample(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``count`` distinct stored examples (fewer if fewer are stored)."""
        if self.is_empty():
            raise RuntimeError("cannot sample from an empty buffer")
        index = torch.randperm(len(self), generator=self.generator)[:count]
        return self.inputs[index], self.labels[index], self.logits[index]

    def state_dict(self) -> dict:
        return {
            "size": self.size,
            "seen": self.seen,
            "generator": self.generator.get_state(),
            "inputs": self.inputs,
            "labels": self.labels,
            "logits": self.logits,
            "task_ids": self.task_ids,
        }

    def load_state_dict(self, state: dict) -> None:
        self.size, self.seen = state["size"], state["seen"]
        self.generator.set_state(state["generator"])
        self.inputs, self.labels = state["inputs"], state["labels"]
        self.logits, self.task_ids = state["logits"], state["task_ids"]
