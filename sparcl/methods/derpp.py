"""DER++: CE(current) + alpha * MSE(logits, stored logits) + beta * CE(replayed labels).

Two independent buffer batches, each through its own forward pass (mammoth semantics).
Each term is back-propagated as soon as it is computed: the gradients accumulate to those of
the summed loss, and only one forward graph of activations is alive at a time (a third of
the peak memory of one backward over the sum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from sparcl.methods.base import ReplayMethod, ReplayOptions, require


@dataclass(frozen=True)
class DerppOptions(ReplayOptions):
    alpha: float = 0.1  # weight of the logit-matching (MSE) replay term
    beta: float = 0.5  # weight of the label (CE) replay term

    def validate(self, model: str) -> None:
        super().validate(model)
        require(self.alpha >= 0 and self.beta >= 0, "--alpha and --beta must be >= 0")


class Derpp(ReplayMethod):
    name = "derpp"
    Options: ClassVar[type[DerppOptions]] = DerppOptions
    options: DerppOptions

    def observe(
        self, inputs: torch.Tensor, labels: torch.Tensor, raw_inputs: torch.Tensor, task: int
    ) -> float:
        self.optimizer.zero_grad()
        local, options = self.cluster.local, self.options
        logits, weight = self.forward_shard(inputs)
        loss = weight * self.current_loss(logits, local(labels), task)
        loss.backward()
        total = loss.item()
        self.samples_forwarded += len(labels)
        if not self.buffer.is_empty():
            replay_inputs, _, replay_logits = self.buffer.sample(options.minibatch_size)
            self.samples_forwarded += 2 * len(replay_inputs)
            replay, replay_weight = self.forward_shard(self.transform(replay_inputs))
            logit_loss = replay_weight * options.alpha * F.mse_loss(replay, local(replay_logits))
            logit_loss.backward()
            replay_inputs, replay_labels, _ = self.buffer.sample(options.minibatch_size)
            replay, replay_weight = self.forward_shard(self.transform(replay_inputs))
            label_loss = (
                replay_weight * options.beta * F.cross_entropy(replay, local(replay_labels))
            )
            label_loss.backward()
            total += logit_loss.item() + label_loss.item()
        self.apply_step()
        current_logits = self.cluster.gather(logits.detach())
        self.buffer.add(raw_inputs, labels, current_logits, task)
        self.last_logits = current_logits
        return total
