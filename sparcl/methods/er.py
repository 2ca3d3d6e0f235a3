"""Experience Replay: cross-entropy over the current batch and a batch drawn from the buffer.

``er`` is mammoth's: one cross-entropy mean over the current and the replayed examples
together (one forward over both). ``sparcl-er`` keeps the SparCL release's form, the sum of
the two batch means, which at equal batch sizes doubles the gradient of the single mean
(the same as doubling the learning rate): see :attr:`Er.separate_replay_mean`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from sparcl.methods.base import ReplayMethod


class Er(ReplayMethod):
    name = "er"
    # False: one mean over current + replayed examples (mammoth); True: CE(current) + CE(replay).
    separate_replay_mean: ClassVar[bool] = False

    def _replay_loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        replay_labels: torch.Tensor,
        task: int,
        batch: int,
        replay_batch: int,
    ) -> torch.Tensor:
        """This rank's share of the loss over ``logits`` (current shard, then replay shard)."""
        n = len(labels)
        if self.separate_replay_mean:
            current = self.cluster.shard_weight(batch) * self.current_loss(logits[:n], labels, task)
            replay = F.cross_entropy(logits[n:], replay_labels)
            return current + self.cluster.shard_weight(replay_batch) * replay
        total = self.current_loss(logits[:n], labels, task, reduction="sum")
        total = total + F.cross_entropy(logits[n:], replay_labels, reduction="sum")
        # Summed over ranks: world_size times the mean over the global concatenated batch.
        return total * self.cluster.world_size / (batch + replay_batch)

    def observe(
        self, inputs: torch.Tensor, labels: torch.Tensor, raw_inputs: torch.Tensor, task: int
    ) -> float:
        self.optimizer.zero_grad()
        local = self.cluster.local
        n = len(local(inputs))
        if self.buffer.is_empty():
            logits = self.logits(local(inputs))
            weight = self.cluster.shard_weight(len(inputs))
            loss = weight * self.current_loss(logits, local(labels), task)
        else:
            replay_inputs, replay_labels, _ = self.buffer.sample(self.options.minibatch_size)
            replay = local(self.transform(replay_inputs))
            logits = self.logits(torch.cat([local(inputs), replay]))  # one forward, as mammoth
            loss = self._replay_loss(
                logits, local(labels), local(replay_labels), task, len(inputs), len(replay_inputs)
            )
            self.samples_forwarded += len(replay_inputs)
        loss.backward()
        self.samples_forwarded += len(inputs)
        self.apply_step()
        current_logits = self.cluster.gather(logits[:n].detach())
        self.buffer.add(raw_inputs, labels, current_logits, task)
        self.last_logits = current_logits
        return loss.item()
