"""Joint: at task t, train on all data of tasks 0..t (the upper bound)."""

from __future__ import annotations

import torch

from sparcl.data.protocol import SplitData
from sparcl.methods.sgd import Sgd


class Joint(Sgd):
    name = "joint"

    def training_indices(self, data: SplitData, task: int) -> torch.Tensor:
        return torch.cat([data.task_indices(t) for t in range(task + 1)])

    def current_loss(self, logits: torch.Tensor, labels: torch.Tensor, task: int) -> torch.Tensor:
        # Joint batches mix tasks: never restrict the logits to one task.
        return torch.nn.functional.cross_entropy(logits, labels)
