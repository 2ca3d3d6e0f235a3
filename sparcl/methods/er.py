"""Experience Replay: CE on the current batch + CE on a batch drawn from the buffer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparcl.methods.base import ContinualMethod


class Er(ContinualMethod):
    name = "er"
    uses_buffer = True

    def observe(
        self, inputs: torch.Tensor, labels: torch.Tensor, raw_inputs: torch.Tensor, task: int
    ) -> float:
        self.optimizer.zero_grad()
        n = inputs.shape[0]
        if self.buffer.is_empty():
            logits = self.net(inputs)
            loss = self.current_loss(logits, labels, task)
        else:
            replay_inputs, replay_labels, _ = self.buffer.sample(self.minibatch_size)
            # One forward over both batches (as mammoth), two loss terms (as SparCL).
            logits = self.net(torch.cat([inputs, self.transform(replay_inputs)]))
            loss = self.current_loss(logits[:n], labels, task)
            loss = loss + F.cross_entropy(logits[n:], replay_labels)
        loss.backward()
        self.samples_forwarded += len(logits)
        self.optimizer.step()
        self.buffer.add(raw_inputs, labels, logits[:n].detach(), task)
        self.last_logits = logits[: len(labels)].detach()
        return loss.item()
