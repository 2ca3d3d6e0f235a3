"""SparCL on ER and DER++: TDM (weight masks) + DDR (data removal) + DGM (gradient masks).

The network's sparse layers carry the weight mask as their block layout, so the masked
weights are never multiplied; DGM's gradient masks make the kernels skip weight-gradient
blocks; DDR shrinks the task's data. The released SparCL code crashes on its ER path; here
both bases share this one mixin.
"""

from __future__ import annotations

import torch

from sparcl.ddr import DataRemoval
from sparcl.dgm import GradientMasking
from sparcl.methods.derpp import Derpp
from sparcl.methods.er import Er
from sparcl.tdm import TaskAwareMasking, TdmSchedule


class SparclMixin:
    """Adds SparCL's three mechanisms to a rehearsal method's ``observe()``."""

    def __init__(self, *args, **options) -> None:
        super().__init__(*args, **options)
        self._init_sparcl(options)

    def _init_sparcl(self, options: dict) -> None:
        schedule = TdmSchedule(
            p_inter=options.get("tdm_p_inter", 0.01),
            p_intra=options.get("tdm_p_intra", 0.01),
            delta_k=options.get("tdm_delta_k", 5),
            lam=options.get("tdm_lambda", 0.5),
            frozen_epoch=options.get("tdm_frozen_epoch", 45),
        )
        self.tdm = TaskAwareMasking(self.net, schedule, self.seed)
        self.dgm = GradientMasking(
            self.net, options.get("dgm_keep", 0.8), options.get("dgm_interval", 30)
        )
        self.ddr_fraction = options.get("ddr_fraction", 0.075)
        self.ddr_epochs = tuple(options.get("ddr_epochs", (5, 10, 15, 20)))
        self.ddr: DataRemoval | None = None

    def begin_epoch(self, task: int, epoch: int) -> None:
        if self.tdm.begin_epoch(epoch, self.optimizer):
            self.dgm.reset()  # layout changes clear gradient masks: start a new cycle
        if self.ddr is not None:
            self.ddr.begin_epoch(epoch)

    def epoch_positions(self, count: int) -> torch.Tensor:
        if self.ddr is None or self.ddr.n_examples != count:
            self.ddr = DataRemoval(count, self.ddr_fraction, self.ddr_epochs, self.seed)
        return self.ddr.active_positions()

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        self.ddr = None  # forgetting statistics are per task

    def observe(self, inputs, labels, raw_inputs, task) -> float:
        self.dgm.before_backward()  # the forward pass captures the gradient mask
        loss = super().observe(inputs, labels, raw_inputs, task)
        self.dgm.after_backward()
        return loss

    def after_observe(self, positions: torch.Tensor, labels: torch.Tensor) -> None:
        if self.ddr is not None and self.last_logits is not None:
            self.ddr.record(positions, self.last_logits.argmax(1) == labels)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tdm": self.tdm.state_dict(), "dgm": self.dgm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tdm.load_state_dict(state["tdm"])
        self.dgm.load_state_dict(state["dgm"])


class SparclDerpp(SparclMixin, Derpp):
    name = "sparcl-derpp"
    needs_sparsity = True


class SparclEr(SparclMixin, Er):
    name = "sparcl-er"
    needs_sparsity = True
