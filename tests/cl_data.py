"""Writers of tiny datasets in the exact on-disk formats the loaders read."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _images(n_per_class: int, classes: int, shape: tuple[int, ...], seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    images = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
    images[..., :2, :2] = (labels * (255 // classes)).reshape(
        -1, *([1] * len(shape))
    )  # learnable cue
    return images, labels


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_fmnist(root: Path, train_per_class: int = 12, test_per_class: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, prefix, count in (
        ("train", "train", train_per_class),
        ("test", "t10k", test_per_class),
    ):
        images, labels = _images(count, 10, (28, 28), seed=len(split))
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_cifar10(root: Path, per_class: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images, labels = _images(per_class, 10, (3, 32, 32), seed=index)
        batch = {b"data": images.reshape(len(labels), -1), b"labels": labels.tolist()}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    return root


def write_tiny_imagenet(root: Path, classes: int = 200, train_per_class: int = 1) -> Path:
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    wnids = [f"n{index:08d}" for index in range(classes)]
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)
    annotations = []
    for label, wnid in enumerate(wnids):
        images_dir = folder / "train" / wnid / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        for k in range(train_per_class):
            pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images_dir / f"{wnid}_{k}.JPEG")
        name = f"val_{label}.JPEG"
        Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(
            folder / "val" / "images" / name
        )
        annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return root
