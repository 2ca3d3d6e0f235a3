"""DER++: CE(current) + alpha * MSE(logits, stored logits) + beta * CE(replayed labels).

Two independent buffer batches, each through its own forward pass (mammoth semantics).
Each term is back-propagated as soon as it is computed: the gradients accumulate to those of
the summed loss, and only one forward graph of activations is alive at a time (a third of
the peak memory of one backward over the sum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparcl.methods.base import ContinualMethod


class Derpp(ContinualMethod):
    name = "derpp"
    uses_buffer = True

    def observe(
        self, inputs: torch.Tensor, labels: torch.Tensor, raw_inputs: torch.Tensor, task: int
    ) -> float:
        self.optimizer.zero_grad()
        local = self.cluster.local
        logits, weight = self.forward_shard(inputs)
        loss = weight * self.current_loss(logits, local(labels), task)
        loss.backward()
        total = loss.item()
        self.samples_forwarded += len(labels)
        if not self.buffer.is_empty():
            replay_inputs, _, replay_logits = self.buffer.sample(self.minibatch_size)
            self.samples_forwarded += 2 * len(replay_inputs)
            replay, replay_weight = self.forward_shard(self.transform(replay_inputs))
            logit_loss = replay_weight * self.alpha * F.mse_loss(replay, local(replay_logits))
            logit_loss.backward()
            replay_inputs, replay_labels, _ = self.buffer.sample(self.minibatch_size)
            replay, replay_weight = self.forward_shard(self.transform(replay_inputs))
            label_loss = replay_weight * self.beta * F.cross_entropy(replay, local(replay_labels))
            label_loss.backward()
            total += logit_loss.item() + label_loss.item()
        self.apply_step()
        current_logits = self.cluster.gather(logits.detach())
        self.buffer.add(raw_inputs, labels, current_logits, task)
        self.last_logits = current_logits
        return total
