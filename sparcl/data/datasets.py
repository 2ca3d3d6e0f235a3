"""The benchmarks: each a protocol (data) plus where its files live."""

from __future__ import annotations

from pathlib import Path

import torch

from sparcl.data.protocol import CorruptDataError, MissingDataError, Protocol, SplitData
from sparcl.data.readers import (
    check_split,
    find_first,
    read_cifar10_batches,
    read_idx,
    read_tiny_imagenet,
)

PROTOCOLS = {
    # mammoth's MNIST-family protocols train without augmentation (a crop and a flip cost
    # 4-10 Class-IL points against mammoth's DER++/ER in issue 28's comparison); its CIFAR and
    # Tiny-ImageNet ones crop (padding 4) and flip.
    "seq-fmnist": Protocol("seq-fmnist", 5, 2, 1, 28, (0.2860,), (0.3530,), augmentation="none"),
    "seq-cifar10": Protocol(
        "seq-cifar10", 5, 2, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)
    ),
    "seq-tinyimg": Protocol(
        "seq-tinyimg", 10, 20, 3, 64, (0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821)
    ),
}

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def load_fmnist(data_dir: Path | None) -> SplitData:
    # Debian's copy only when no --data_dir is given: a given one is never silently replaced.
    roots = [data_dir, data_dir / "fashion-mnist"] if data_dir else [DEBIAN_FMNIST]
    how = (
        "Install Debian's package (`apt-get install dataset-fashion-mnist`) or put the four "
        "idx files (train-images-idx3-ubyte[.gz], ...) in --data_dir."
    )
    protocol = PROTOCOLS["seq-fmnist"]
    tensors, paths = {}, {}
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        candidates = [root / f"{stem}{suffix}" for root in roots for suffix in (".gz", "")]
        paths[stem] = find_first(candidates, f"Fashion-MNIST file {stem}", how)
        tensors[stem] = read_idx(paths[stem])
    expected = {"images": (protocol.image_size, protocol.image_size), "labels": ()}
    for stem, tensor in tensors.items():
        kind = "images" if "images" in stem else "labels"
        if tuple(tensor.shape[1:]) != expected[kind]:
            raise CorruptDataError(
                f"{paths[stem]}: {kind} of shape {tuple(tensor.shape[1:])}, expected "
                f"{expected[kind]}"
            )
    for split in ("train", "t10k"):
        check_split(
            tensors[f"{split}-images-idx3-ubyte"],
            tensors[f"{split}-labels-idx1-ubyte"],
            protocol.n_classes,
            str(paths[f"{split}-images-idx3-ubyte"]),
            str(paths[f"{split}-labels-idx1-ubyte"]),
        )
    return SplitData(
        protocol,
        tensors["train-images-idx3-ubyte"].unsqueeze(1),
        tensors["train-labels-idx1-ubyte"].long(),
        tensors["t10k-images-idx3-ubyte"].unsqueeze(1),
        tensors["t10k-labels-idx1-ubyte"].long(),
    )


def load_cifar10(data_dir: Path | None) -> SplitData:
    roots = [data_dir / "cifar-10-batches-py", data_dir] if data_dir else []
    how = (
        "Put the CIFAR-10 python version (the folder cifar-10-batches-py with data_batch_1..5 "
        "and test_batch) in --data_dir; nothing is downloaded."
    )
    marker = find_first([root / "test_batch" for root in roots], "CIFAR-10 batches", how)
    train_x, train_y, test_x, test_y = read_cifar10_batches(marker.parent)
    folder = marker.parent
    for x, y, name in ((train_x, train_y, "data_batch_*"), (test_x, test_y, "test_batch")):
        check_split(
            x, y, PROTOCOLS["seq-cifar10"].n_classes, str(folder / name), str(folder / name)
        )
    return SplitData(PROTOCOLS["seq-cifar10"], train_x, train_y, test_x, test_y)


def load_tiny_imagenet(data_dir: Path | None) -> SplitData:
    roots = [data_dir / "tiny-imagenet-200", data_dir] if data_dir else []
    how = (
        "Put Tiny-ImageNet-200 (wnids.txt, train/<wnid>/images/*.JPEG, val/images and "
        "val/val_annotations.txt) in --data_dir; nothing is downloaded."
    )
    marker = find_first([root / "wnids.txt" for root in roots], "Tiny-ImageNet", how)
    return SplitData(PROTOCOLS["seq-tinyimg"], *read_tiny_imagenet(marker.parent))


LOADERS = {
    "seq-fmnist": load_fmnist,
    "seq-cifar10": load_cifar10,
    "seq-tinyimg": load_tiny_imagenet,
}


def load_dataset(name: str, data_dir: str | Path | None = None) -> SplitData:
    """Load benchmark ``name`` (see ``PROTOCOLS``) from disk.

    Every file is checked before it is used (format, header against payload, images against
    labels, label range): a bad one raises :class:`CorruptDataError` naming it.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(LOADERS)}")
    if data_dir and not Path(data_dir).is_dir():
        raise MissingDataError(f"--data_dir {data_dir} does not exist or is not a directory")
    data = LOADERS[name](Path(data_dir) if data_dir else None)
    assert data.train_images.dtype == torch.uint8
    return data
