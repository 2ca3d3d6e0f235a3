"""Readers of the standard on-disk formats (no downloads, ever)."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from sparcl.data.protocol import CorruptDataError, MissingDataError


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (MNIST / Fashion-MNIST format), gzipped or not, as a uint8 tensor.

    Raises :class:`CorruptDataError` naming the file when it cannot be read, is not an
    unsigned-byte IDX file, or holds a different number of bytes than its header declares.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise CorruptDataError(
            f"{path}: cannot be read ({error or type(error).__name__})"
        ) from None
    if len(data) < 4:
        raise CorruptDataError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise CorruptDataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    if len(data) < 4 + 4 * ndim:
        raise CorruptDataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = len(data) - 4 - 4 * ndim
    if payload != math.prod(shape):
        raise CorruptDataError(
            f"{path}: the header declares shape {shape} ({math.prod(shape)} bytes) but the file "
            f"holds {payload} bytes of data (truncated or corrupt)"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return torch.from_numpy(array.reshape(shape).copy())


def check_split(
    images: torch.Tensor, labels: torch.Tensor, n_classes: int, images_file: str, labels_file: str
) -> None:
    """Images and labels that belong together: same count, labels within the protocol's classes."""
    if images.shape[0] != labels.shape[0]:
        raise CorruptDataError(
            f"{images_file} holds {images.shape[0]} images but {labels_file} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise CorruptDataError(
            f"{labels_file}: labels must lie in [0, {n_classes}), found "
            f"{int(labels.min())}..{int(labels.max())}"
        )


def find_first(candidates: list[Path], what: str, how_to_get: str) -> Path:
    for path in candidates:
        if path.exists():
            return path
    listed = "\n  ".join(str(p) for p in candidates)
    raise MissingDataError(f"{what} not found; looked in:\n  {listed}\n{how_to_get}")


def read_cifar10_batches(root: Path) -> tuple[torch.Tensor, ...]:
    """The CIFAR-10 "python version" pickles: (train images, labels, test images, labels)."""

    def load(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in names:
            try:
                with open(root / name, "rb") as handle:
                    batch = pickle.load(handle, encoding="bytes")
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                images.append(data.reshape(-1, 3, 32, 32))
                if len(batch[b"labels"]) != len(images[-1]):
                    raise ValueError(f"{len(images[-1])} images but {len(batch[b'labels'])} labels")
            except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as error:
                raise CorruptDataError(f"{root / name}: not a CIFAR-10 batch ({error})") from None
            except ValueError as error:
                raise CorruptDataError(f"{root / name}: {error}") from None
            labels.extend(batch[b"labels"])
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)

    train = load([f"data_batch_{i}" for i in range(1, 6)])
    test = load(["test_batch"])
    return (*train, *test)


def read_tiny_imagenet(root: Path) -> tuple[torch.Tensor, ...]:
    """The Tiny-ImageNet-200 folder layout: classes in ``wnids.txt`` order, val as the test set."""
    from PIL import Image  # Pillow arrives with matplotlib; only this reader needs it

    wnids = (root / "wnids.txt").read_text().split()
    index = {wnid: i for i, wnid in enumerate(wnids)}

    def load(paths_and_labels: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = np.empty((len(paths_and_labels), 3, 64, 64), dtype=np.uint8)
        for i, (path, _) in enumerate(paths_and_labels):
            with Image.open(path) as image:
                images[i] = np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
        labels = torch.tensor([label for _, label in paths_and_labels], dtype=torch.long)
        return torch.from_numpy(images), labels

    train = [
        (path, index[wnid])
        for wnid in wnids
        for path in sorted((root / "train" / wnid / "images").glob("*.JPEG"))
    ]
    val = []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        val.append((root / "val" / "images" / name, index[wnid]))
    return (*load(train), *load(val))
