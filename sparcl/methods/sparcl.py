"""SparCL on ER and DER++: TDM (weight masks) + DDR (data removal) + DGM (gradient masks).

The network's sparse layers carry the weight mask as their block layout, so the masked
weights are never multiplied; DGM's gradient masks make the kernels skip weight-gradient
blocks; DDR shrinks the task's data. The released SparCL code crashes on its ER path; here
both bases share this one mixin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from sparcl.ddr import DataRemoval
from sparcl.dgm import GradientMasking
from sparcl.methods.base import MethodOptions, ReplayOptions, require
from sparcl.methods.derpp import Derpp, DerppOptions
from sparcl.methods.er import Er
from sparcl.tdm import TaskAwareMasking, TdmSchedule

PAPER_EPOCHS = 50  # the length of the schedule the TDM/DDR epochs below are given for
SCHEDULES = ("paper", "scaled")


@dataclass(frozen=True)
class SparclOptions(MethodOptions):
    """TDM, DDR and DGM settings; the defaults are the paper's (held by each mechanism)."""

    tdm_p_inter: float = TdmSchedule.p_inter
    tdm_p_intra: float = TdmSchedule.p_intra
    tdm_delta_k: int = TdmSchedule.delta_k
    tdm_lambda: float = TdmSchedule.lam
    tdm_frozen_epoch: int = TdmSchedule.frozen_epoch
    ddr_fraction: float = DataRemoval.DEFAULT_FRACTION
    ddr_epochs: tuple[int, ...] = DataRemoval.DEFAULT_EPOCHS
    dgm_keep: float = GradientMasking.DEFAULT_KEEP_FRACTION
    dgm_interval: int = GradientMasking.DEFAULT_INTERVAL
    # "paper": TDM/DDR epochs as given (the paper's 50-epoch schedule); "scaled": mapped onto
    # n_epochs (epoch e -> e * n_epochs / 50), for runs shorter than the schedule.
    schedule: str = "paper"

    def validate(self, model: str) -> None:
        super().validate(model)
        require(
            0 <= self.tdm_p_inter < 1 and 0 <= self.tdm_p_intra < 1, "--tdm_p_* must be in [0, 1)"
        )
        require(self.tdm_delta_k > 0, "--tdm_delta_k must be > 0")
        require(0 <= self.ddr_fraction < 1, "--ddr_fraction must be in [0, 1)")
        require(0 < self.dgm_keep <= 1, "--dgm_keep must be in (0, 1]")
        require(self.dgm_interval > 0, "--dgm_interval must be > 0")
        require(self.schedule in SCHEDULES, f"--schedule must be one of {SCHEDULES}")

    def _scaled(self, epoch: int, n_epochs: int) -> int:
        """Epoch ``epoch`` of the paper's 50-epoch schedule mapped onto ``n_epochs``."""
        if self.schedule != "scaled":
            return epoch
        return round(epoch * n_epochs / PAPER_EPOCHS)

    def schedule_epochs(self, n_epochs: int) -> dict:
        """TDM's delta_k and frozen epoch and DDR's removal epochs as a run applies them."""
        return {
            "tdm_delta_k": max(1, self._scaled(self.tdm_delta_k, n_epochs)),
            "tdm_frozen_epoch": self._scaled(self.tdm_frozen_epoch, n_epochs),
            # Removal needs statistics from at least one epoch; merged epochs remove once.
            "ddr_epochs": tuple(
                sorted({max(1, self._scaled(e, n_epochs)) for e in self.ddr_epochs})
            ),
        }

    def schedule_warnings(self, n_epochs: int) -> list[str]:
        epochs = self.schedule_epochs(n_epochs)
        problems = []
        if n_epochs <= epochs["tdm_delta_k"]:
            problems.append(
                f"TDM grows {self.tdm_p_inter:g} of every layer at epoch 0 and prunes it back at "
                f"epoch {epochs['tdm_delta_k']}, which --n_epochs {n_epochs} never reaches: "
                "the density creeps up every task"
            )
        if not any(e < n_epochs for e in epochs["ddr_epochs"]):
            problems.append(
                f"DDR removes data at epochs {epochs['ddr_epochs']}, none below --n_epochs "
                f"{n_epochs}: it never fires"
            )
        return problems

    def for_smoke_run(self) -> SparclOptions:
        return replace(self, schedule="scaled")  # every mechanism still fires in two epochs


class SparclMixin:
    """Adds SparCL's three mechanisms to a rehearsal method's hooks."""

    needs_sparsity: ClassVar[bool] = True
    options: SparclOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        epochs = self.options.schedule_epochs(self.n_epochs)
        schedule = TdmSchedule(
            p_inter=self.options.tdm_p_inter,
            p_intra=self.options.tdm_p_intra,
            delta_k=epochs["tdm_delta_k"],
            lam=self.options.tdm_lambda,
            frozen_epoch=epochs["tdm_frozen_epoch"],
        )
        self.tdm = TaskAwareMasking(self.net, schedule, self.seed)
        self.dgm = GradientMasking(self.net, self.options.dgm_keep, self.options.dgm_interval)
        self.removal_epochs = epochs["ddr_epochs"]
        self.ddr: DataRemoval | None = None

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        self.ddr = None  # forgetting statistics are per task

    def begin_epoch(self, task: int, epoch: int) -> None:
        if self.tdm.begin_epoch(epoch, self.optimizer):
            self.dgm.reset()  # layout changes clear gradient masks: start a new cycle
            self.cluster.check_consistent(self.net, f"after TDM's update of epoch {epoch + 1}")
        if self.ddr is not None:
            self.ddr.begin_epoch(epoch)

    def epoch_positions(self, count: int) -> torch.Tensor:
        if self.ddr is None or self.ddr.n_examples != count:
            self.ddr = DataRemoval(count, self.options.ddr_fraction, self.removal_epochs, self.seed)
        return self.ddr.active_positions()

    def observe(self, inputs, labels, raw_inputs, task) -> float:
        refreshing = self.dgm.refreshing()
        self.dgm.before_backward()  # the forward pass captures the gradient mask
        loss = super().observe(inputs, labels, raw_inputs, task)
        self.dgm.after_backward()
        if refreshing:  # ranks that picked different masks would sum mismatched blocks
            self.cluster.check_consistent(self.net, "after a DGM refresh")
        return loss

    def after_observe(self, positions: torch.Tensor, labels: torch.Tensor) -> None:
        if self.ddr is not None and self.last_logits is not None:
            self.ddr.record(positions, self.last_logits.argmax(1) == labels)

    def gradient_density(self) -> float | None:
        return round(self.dgm.gradient_density, 6)

    def step_gradient_density(self) -> float:
        return self.dgm.current_density()

    def summary(self) -> dict:
        schedule = self.options.schedule_epochs(self.n_epochs)
        return {"schedule": {"mode": self.options.schedule, **schedule}}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tdm": self.tdm.state_dict(), "dgm": self.dgm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tdm.load_state_dict(state["tdm"])
        self.dgm.load_state_dict(state["dgm"])


@dataclass(frozen=True)
class SparclDerppOptions(SparclOptions, DerppOptions):
    """DER++'s settings and SparCL's."""


@dataclass(frozen=True)
class SparclErOptions(SparclOptions, ReplayOptions):
    """ER's settings and SparCL's."""


class SparclDerpp(SparclMixin, Derpp):
    name = "sparcl-derpp"
    Options: ClassVar[type[SparclDerppOptions]] = SparclDerppOptions


class SparclEr(SparclMixin, Er):
    """SparCL on ER with the release's replay loss: CE(current) + CE(replay), two batch means
    (mammoth's ``er`` takes one mean over both: half this gradient at equal batch sizes)."""

    name = "sparcl-er"
    separate_replay_mean: ClassVar[bool] = True
    Options: ClassVar[type[SparclErOptions]] = SparclErOptions
