"""What every continual-learning method shares: its options, its hooks, the network's optimizer.

A method is one module in this package defining a :class:`ContinualMethod` subclass with a
``name`` and, when it takes settings of its own, an ``Options`` dataclass (subclassing
:class:`MethodOptions`) that declares them: their names are the command-line flags and YAML
keys, their defaults are the only defaults, ``validate`` is the only place they are checked.
The trainer builds a method by keyword and only ever calls the hooks defined here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sparcl.buffer import ReservoirBuffer
from sparcl.data.protocol import Protocol, SplitData
from sparcl.distributed import Cluster
from sparcl.precision import logits as logits_in


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: options name the bad flag."""
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class MethodOptions:
    """Settings every method takes: the SGD learning rate and the current-task loss."""

    lr: float = 0.03
    mask_current_logits: bool = False  # restrict the current batch's loss to its task's classes

    def validate(self, model: str) -> None:
        """Raise ``ValueError`` naming the first invalid setting of ``--model model``."""
        require(self.lr > 0, f"--lr must be > 0, got {self.lr}")

    def schedule_warnings(self, n_epochs: int) -> list[str]:
        """Why the method's own schedule would not run as intended in ``n_epochs``."""
        return []

    def for_smoke_run(self) -> MethodOptions:
        """These options as ``--debug_mode`` runs them (a couple of epochs per task)."""
        return self


@dataclass(frozen=True)
class ReplayOptions(MethodOptions):
    """Settings of methods that rehearse from a reservoir buffer."""

    buffer_size: int = 500
    minibatch_size: int = 32  # examples replayed per step (per replay term)

    def validate(self, model: str) -> None:
        super().validate(model)
        require(self.buffer_size > 0, f"--model {model} needs --buffer_size > 0")
        require(self.minibatch_size > 0, f"--minibatch_size must be > 0, got {self.minibatch_size}")


class ContinualMethod:
    """A continual-learning method: ``observe()`` takes one training step on one batch.

    Subclasses set ``name`` (the ``--model`` value), ``Options`` and implement
    :meth:`observe`. ``transform`` turns stored uint8 inputs into augmented network inputs
    (used for buffer replays). ``n_epochs`` is the run's epochs per task, for methods with
    schedules; ``cluster`` the process group under ``torchrun`` (one process by default).
    """

    name: ClassVar[str] = ""  # empty: not a selectable method
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_sparsity: ClassVar[bool] = False  # SparCL methods need sparse layers to mask

    def __init__(
        self,
        net: nn.Module,
        protocol: Protocol,
        transform: Callable[[torch.Tensor], torch.Tensor],
        options: MethodOptions | None = None,
        *,
        seed: int = 0,
        n_epochs: int = 1,
        cluster: Cluster | None = None,
        precision: str = "fp32",
    ) -> None:
        options = self.Options() if options is None else options
        if not isinstance(options, self.Options):
            raise TypeError(
                f"{type(self).__name__} takes {self.Options.__name__}, got {type(options).__name__}"
            )
        self.net = net
        self.protocol = protocol
        self.transform = transform
        self.options = options
        self.seed = seed
        self.n_epochs = n_epochs
        self.cluster = cluster or Cluster()
        self.precision = precision  # of every forward (sparcl.precision)
        self.buffer = ReservoirBuffer(self.buffer_capacity(), seed)
        self.optimizer = torch.optim.SGD(net.parameters(), lr=options.lr)
        self.last_logits: torch.Tensor | None = None  # current-batch logits of the last step
        self.samples_forwarded = 0  # examples through forward + backward (FLOPs accounting)

    def buffer_capacity(self) -> int:
        """Examples the replay buffer holds (none unless the method rehearses)."""
        return 0

    # ------------------------------------------------------------------ hooks, in call order

    def begin_task(self, task: int) -> None:
        """SparCL protocol: plain SGD, re-created for every task."""
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=self.options.lr)

    def training_indices(self, data: SplitData, task: int) -> torch.Tensor:
        """Which training examples this method trains on during ``task``."""
        return data.task_indices(task)

    def begin_epoch(self, task: int, epoch: int) -> None:
        """Hook at the start of every epoch (task-relative ``epoch``)."""

    def epoch_positions(self, count: int) -> torch.Tensor:
        """Which of the task's ``count`` training examples this epoch visits (all by default)."""
        return torch.arange(count)

    def observe(
        self, inputs: torch.Tensor, labels: torch.Tensor, raw_inputs: torch.Tensor, task: int
    ) -> float:
        """One training step on a batch; returns the loss.

        Under ``torchrun`` every rank receives the whole (global) batch and computes its shard
        (see sparcl.distributed): use :meth:`forward_shard` and :meth:`apply_step`.
        """
        raise NotImplementedError

    def after_observe(self, positions: torch.Tensor, labels: torch.Tensor) -> None:
        """Hook after each step with the batch's positions in the task's example list."""

    def end_task(self, task: int) -> None:
        """Hook after the last epoch of ``task``, before it is evaluated."""

    def gradient_density(self) -> float | None:
        """Fraction of the stored weight-gradient blocks computed so far (None: all of them)."""
        return None

    def step_gradient_density(self) -> float:
        """Fraction of the stored weight-gradient blocks the next step computes."""
        return 1.0

    def summary(self) -> dict:
        """The method's own entries for results.json."""
        return {}

    # ------------------------------------------------------------------ shared by observe()

    def current_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, task: int, reduction: str = "mean"
    ) -> torch.Tensor:
        """Cross-entropy on the current batch, optionally over the current task's classes only."""
        if self.options.mask_current_logits:
            classes = self.protocol.task_classes(task)
            outside = torch.ones(logits.shape[1], dtype=torch.bool)
            outside[classes.start : classes.stop] = False
            logits = logits.masked_fill(outside, float("-inf"))
        return F.cross_entropy(logits, labels, reduction=reduction)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The network's fp32 logits for ``inputs``, computed in the run's precision."""
        return logits_in(self.net, inputs, self.precision)

    def forward_shard(self, inputs: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Logits of this rank's shard of ``inputs`` and the weight of its mean loss."""
        return self.logits(self.cluster.local(inputs)), self.cluster.shard_weight(len(inputs))

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


class ReplayMethod(ContinualMethod):
    """A method rehearsing from a reservoir buffer of ``buffer_size`` examples."""

    Options: ClassVar[type[MethodOptions]] = ReplayOptions
    options: ReplayOptions

    def buffer_capacity(self) -> int:
        return self.options.buffer_size
