"""Experience Replay: CE on the current batch + CE on a batch drawn from the buffer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparcl.methods.base import ReplayMethod


class Er(ReplayMethod):
    name = "er"

    def observe(
        self, inputs: torch.Tensor, labels: torch.Tensor, raw_inputs: torch.Tensor, task: int
    ) -> float:
        self.optimizer.zero_grad()
        local = self.cluster.local
        n = len(local(inputs))
        weight = self.cluster.shard_weight(len(inputs))
        if self.buffer.is_empty():
            logits = self.net(local(inputs))
            loss = weight * self.current_loss(logits, local(labels), task)
        else:
            replay_inputs, replay_labels, _ = self.buffer.sample(self.options.minibatch_size)
            replay_weight = self.cluster.shard_weight(len(replay_inputs))
            # One forward over both batches (as mammoth), two loss terms (as SparCL).
            replay = local(self.transform(replay_inputs))
            logits = self.net(torch.cat([local(inputs), replay]))
            loss = weight * self.current_loss(logits[:n], local(labels), task)
            loss = loss + replay_weight * F.cross_entropy(logits[n:], local(replay_labels))
            self.samples_forwarded += len(replay_inputs)
        loss.backward()
        self.samples_forwarded += len(inputs)
        self.apply_step()
        current_logits = self.cluster.gather(logits[:n].detach())
        self.buffer.add(raw_inputs, labels, current_logits, task)
        self.last_logits = current_logits
        return loss.item()
