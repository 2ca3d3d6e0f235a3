"""How a class-incremental benchmark is declared: as data, not as code."""

from __future__ import annotations

from dataclasses import dataclass

import torch

AUGMENTATIONS = ("none", "crop_flip")


@dataclass(frozen=True)
class Protocol:
    """A "seq-" benchmark: classes split into equal tasks in label order.

    ``augmentation`` is the training augmentation of the reference protocol (mammoth's):
    ``"crop_flip"`` (random crop with ``crop_padding`` zero padding, horizontal flip when
    ``horizontal_flip``) or ``"none"``; inputs are normalised either way.
    """

    name: str
    n_tasks: int
    classes_per_task: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 4
    horizontal_flip: bool = True
    augmentation: str = "crop_flip"

    @property
    def n_classes(self) -> int:
        return self.n_tasks * self.classes_per_task

    def task_classes(self, task: int) -> range:
        """The labels that belong to ``task`` (0-based)."""
        start = task * self.classes_per_task
        return range(start, start + self.classes_per_task)

    def task_of_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.div(labels, self.classes_per_task, rounding_mode="floor")


@dataclass
class SplitData:
    """Images (uint8 ``[N, C, H, W]``) and labels of both splits, plus the protocol."""

    protocol: Protocol
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def task_indices(self, task: int, split: str = "train") -> torch.Tensor:
        labels = self.train_labels if split == "train" else self.test_labels
        return (self.protocol.task_of_labels(labels) == task).nonzero().squeeze(1)


class MissingDataError(FileNotFoundError):
    """The dataset files are not where they should be; the message says how to get them."""


class CorruptDataError(ValueError):
    """A dataset file cannot be used as it is; the message names the file and the problem."""
