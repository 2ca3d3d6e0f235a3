"""SGD: fine-tune on each task in turn (the lower bound)."""

from __future__ import annotations

import torch

from sparcl.methods.base import ContinualMethod


class Sgd(ContinualMethod):
    name = "sgd"

    def observe(
        self, inputs: torch.Tensor, labels: torch.Tensor, raw_inputs: torch.Tensor, task: int
    ) -> float:
        self.optimizer.zero_grad()
        logits, weight = self.forward_shard(inputs)
        loss = weight * self.current_loss(logits, self.cluster.local(labels), task)
        loss.backward()
        self.samples_forwarded += len(labels)
        self.apply_step()
        return loss.item()
