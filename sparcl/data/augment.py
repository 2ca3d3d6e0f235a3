"""Batched augmentation on uint8 image tensors: random crop with padding, flip, normalise."""

from __future__ import annotations

import dataclasses

import torch

from sparcl.data.protocol import Protocol, SplitData


def normalize(images: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float, scaled to [0, 1] and standardised per channel."""
    mean = torch.tensor(protocol.mean).view(1, -1, 1, 1)
    std = torch.tensor(protocol.std).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, protocol: Protocol, generator: torch.Generator) -> torch.Tensor:
    """The protocol's training augmentation, then normalise: with ``"crop_flip"`` a random
    crop (zero padding ``protocol.crop_padding``) and horizontal flip, with ``"none"`` only
    the normalisation (``generator`` is not drawn from).

    One gather for the whole batch: every image gets its own offsets and flip, drawn from
    ``generator`` so that runs are reproducible.
    """
    if protocol.augmentation == "none":
        return normalize(images, protocol)
    n, c, h, w = images.shape
    pad = protocol.crop_padding
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) + torch.arange(h)
    cols = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) + torch.arange(w)
    if protocol.horizontal_flip:
        flip = torch.rand(n, 1, generator=generator) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    cropped = padded[
        torch.arange(n).view(n, 1, 1, 1),
        torch.arange(c).view(1, c, 1, 1),
        rows.view(n, 1, h, 1),
        cols.view(n, 1, 1, w),
    ]
    return normalize(cropped, protocol)


def with_augmentation(data: SplitData, augmentation: str) -> SplitData:
    """``data`` whose protocol trains with ``augmentation`` (``"dataset"``: as declared)."""
    if augmentation == "dataset" or augmentation == data.protocol.augmentation:
        return data
    protocol = dataclasses.replace(data.protocol, augmentation=augmentation)
    return dataclasses.replace(data, protocol=protocol)
