"""What every rehearsal method shares: the network, its optimizer, the buffer, the losses."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparcl.buffer import ReservoirBuffer
from sparcl.data.protocol import Protocol, SplitData
from sparcl.distributed import Cluster


class ContinualMethod:
    """A continual-learning method: ``observe()`` takes one training step on one batch.

    Subclasses set ``name`` and implement :meth:`observe`. ``transform`` turns stored uint8
    inputs into augmented network inputs (used for buffer replays).
    """

    name = "base"
    uses_buffer = False
    needs_sparsity = False  # SparCL methods need block-sparse layers to mask

    def __init__(
        self,
        net: nn.Module,
        protocol: Protocol,
        transform: Callable[[torch.Tensor], torch.Tensor],
        lr: float,
        buffer_size: int = 0,
        minibatch_size: int = 32,
        alpha: float = 0.0,
        beta: float = 0.0,
        mask_current_logits: bool = False,
        seed: int = 0,
        **options: object,
    ) -> None:
        # `options` carries method-specific settings (e.g. SparCL's); plain methods ignore them.
        self.net = net
        self.protocol = protocol
        self.transform = transform
        self.lr = lr
        self.minibatch_size = minibatch_size
        self.alpha, self.beta = alpha, beta
        self.mask_current_logits = mask_current_logits
        self.buffer = ReservoirBuffer(buffer_size if self.uses_buffer else 0, seed)
        self.seed = seed
        self.optimizer = torch.optim.SGD(net.parameters(), lr=lr)
        self.last_logits: torch.Tensor | None = None  # current-batch logits of the last step
        self.samples_forwarded = 0  # examples through forward + backward (FLOPs accounting)
        self.cluster = Cluster()  # single process unless the trainer sets one (torchrun)

    def begin_task(self, task: int) -> None:
        """SparCL protocol: plain SGD, re-created for every task."""
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=self.lr)

    def training_indices(self, data: SplitData, task: int) -> torch.Tensor:
        """Which training examples this method trains on during ``task``."""
        return data.task_indices(task)

    def begin_epoch(self, task: int, epoch: int) -> None:
        """Hook at the start of every epoch (task-relative ``epoch``)."""

    def epoch_positions(self, count: int) -> torch.Tensor:
        """Which of the task's ``count`` training examples this epoch visits (all by default)."""
        return torch.arange(count)

    def after_observe(self, positions: torch.Tensor, labels: torch.Tensor) -> None:
        """Hook after each step with the batch's positions in the task's example list."""

    def current_loss(self, logits: torch.Tensor, labels: torch.Tensor, task: int) -> torch.Tensor:
        """Cross-entropy on the current batch, optionally over the current task's classes only."""
        if self.mask_current_logits:
            classes = self.protocol.task_classes(task)
            outside = torch.ones(logits.shape[1], dtype=torch.bool)
            outside[classes.start : classes.stop] = False
            logits = logits.masked_fill(outside, float("-inf"))
        return F.cross_entropy(logits, labels)

    def observe(
        self, inputs: torch.Tensor, labels: torch.Tensor, raw_inputs: torch.Tensor, task: int
    ) -> float:
        """One training step on a batch; returns the loss.

        Under ``torchrun`` every rank receives the whole (global) batch and computes its shard
        (see sparcl.distributed): use :meth:`forward_shard` and :meth:`apply_step`.
        """
        raise NotImplementedError

    def forward_shard(self, inputs: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Logits of this rank's shard of ``inputs`` and the weight of its mean loss."""
        return self.net(self.cluster.local(inputs)), self.cluster.shard_weight(len(inputs))

    def apply_step(self) -> None:
        """Combine the ranks' gradients (a no-op in one process), then take the SGD step."""
        self.cluster.sum_gradients(self.net.parameters())
        self.optimizer.step()

    def state_dict(self) -> dict:
        return {
            "buffer": self.buffer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "samples_forwarded": self.samples_forwarded,
        }

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.samples_forwarded = state["samples_forwarded"]
