"""Class-incremental benchmarks read from standard on-disk formats."""

from sparcl.data.augment import augment, normalize, with_augmentation
from sparcl.data.datasets import PROTOCOLS, load_dataset
from sparcl.data.protocol import CorruptDataError, MissingDataError, Protocol, SplitData

__all__ = [
    "PROTOCOLS",
    "CorruptDataError",
    "MissingDataError",
    "Protocol",
    "SplitData",
    "augment",
    "with_augmentation",
    "load_dataset",
    "normalize",
]
