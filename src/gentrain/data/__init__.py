"""Datasets as uint8 image tensors (N, C, H, W) with labels, split into train / val / test.

Adding a dataset: write `<name>.py` with a config dataclass and a loader, add it to DATASETS, and add
`configs/dataset/<name>.yaml`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gentrain.data.base import (
    Binarize,
    DataInfo,
    DatasetConfig,
    ImageDataset,
    ImageSplit,
    OfficialDatasetConfig,
    apply_binarization,
    resolve_root,
)
from gentrain.data.celeba import CelebAConfig, load_celeba
from gentrain.data.cifar10 import CIFAR10Config, load_cifar10
from gentrain.data.folder import FolderConfig, load_folder
from gentrain.data.mnist import MNISTConfig, load_mnist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetEntry:
    config_class: type
    load: Callable[[DatasetConfig, Path], ImageDataset]


DATASETS: dict[str, DatasetEntry] = {
    "mnist": DatasetEntry(MNISTConfig, load_mnist),
    "cifar10": DatasetEntry(CIFAR10Config, load_cifar10),
    "celeba": DatasetEntry(CelebAConfig, load_celeba),
    "folder": DatasetEntry(FolderConfig, load_folder),
}


def load_dataset(cfg: DatasetConfig) -> ImageDataset:
    """Load the dataset a config describes (dispatching on its schema class), binarized as asked."""
    entry = next(e for e in DATASETS.values() if type(cfg) is e.config_class)
    root = resolve_root(getattr(cfg, "root", None))
    dataset = entry.load(cfg, root)
    return apply_binarization(dataset, cfg.binarize, cfg.split_seed)


__all__ = [
    "DATASETS", "Binarize", "DataInfo", "DatasetConfig", "ImageDataset", "ImageSplit", "OfficialDatasetConfig",
    "load_dataset",
]
