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
from gentrain.data.celeba import CelebAConfig, celeba_info, load_celeba
from gentrain.data.cifar10 import CIFAR10Config, cifar10_info, load_cifar10
from gentrain.data.folder import FolderConfig, folder_info, load_folder
from gentrain.data.mnist import MNISTConfig, load_mnist, mnist_info
from gentrain.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetEntry:
    config_class: type
    info: Callable[[DatasetConfig], DataInfo]  # the shape, levels and classes, before any file is read
    load: Callable[[DatasetConfig, Path], ImageDataset]


DATASETS: dict[str, DatasetEntry] = {
    "mnist": DatasetEntry(MNISTConfig, mnist_info, load_mnist),
    "cifar10": DatasetEntry(CIFAR10Config, cifar10_info, load_cifar10),
    "celeba": DatasetEntry(CelebAConfig, celeba_info, load_celeba),
    "folder": DatasetEntry(FolderConfig, folder_info, load_folder),
}


def _entry(cfg: DatasetConfig) -> DatasetEntry:
    return next(e for e in DATASETS.values() if type(cfg) is e.config_class)


def expected_info(cfg: DatasetConfig) -> DataInfo:
    """What load_dataset(cfg) will return, without reading the data (models are built and checked first)."""
    return _entry(cfg).info(cfg)


def load_dataset(cfg: DatasetConfig) -> ImageDataset:
    """Load the dataset a config describes (dispatching on its schema class), binarized as asked."""
    root = resolve_root(getattr(cfg, "root", None))
    dataset = apply_binarization(_entry(cfg).load(cfg, root), cfg.binarize, cfg.split_seed)
    if dataset.info != expected_info(cfg):
        raise DataError(f"the data changed while it was read: expected {expected_info(cfg)}, loaded {dataset.info}")
    return dataset


__all__ = [
    "DATASETS", "Binarize", "DataInfo", "DatasetConfig", "ImageDataset", "ImageSplit", "OfficialDatasetConfig",
    "expected_info", "load_dataset",
]
