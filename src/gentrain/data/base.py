"""What every dataset produces: uint8 images (N, C, H, W) with labels, split into train / val / test."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from gentrain.config import SEED_MAX, setting
from gentrain.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SIZE = {"min": 8, "max": 1024}  # the rule of every dataset.image_size: a side in pixels
URL_PATTERN = r"(https?|ftp|file)://\S+"


class Binarize(Enum):
    none = "none"  # keep the 8-bit values
    static = "static"  # one seeded Bernoulli draw per image, fixed for the whole run
    dynamic = "dynamic"  # a fresh draw for every training batch; validation and test use the static draw


@dataclass
class DatasetConfig:
    """Settings every dataset shares. Subclasses add their own (see mnist.py, cifar10.py, ...)."""

    binarize: Binarize = Binarize.none
    split_seed: int = setting(0, min=0, max=SEED_MAX)  # seeds held-out splits and static binarization


@dataclass
class OfficialDatasetConfig(DatasetConfig):
    """A published dataset with known files and checksums."""

    root: Optional[str] = None  # null: $GENTRAIN_DATA, else ./data
    download: bool = True  # fetch missing files (with a progress bar) and verify their published md5
    verify: bool = True  # check md5s of a full official set; false loads files that do not match

    def problems(self, prefix: str) -> Iterator[str]:
        root = resolve_root(self.root)
        named = f"{prefix}root={self.root}" if self.root else f"the data folder {root} ($GENTRAIN_DATA or ./data)"
        if root.exists() and not root.is_dir():
            yield f"{named} is not a folder"
        elif not root.exists() and not self.download:
            yield f"{named} does not exist (and {prefix}download=false)"


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data to build itself."""

    channels: int
    height: int
    width: int
    levels: int  # 256 for 8-bit images, 2 for binarized ones
    num_classes: Optional[int]  # classes a conditional model can use; None when the data has none

    @property
    def num_dims(self) -> int:
        return self.channels * self.height * self.width

    @classmethod
    def square(cls, cfg: DatasetConfig, channels: int, side: int, num_classes: Optional[int]) -> "DataInfo":
        """What a dataset config will load, known before any file is read: models are built and checked first."""
        levels = 256 if cfg.binarize is Binarize.none else 2
        return cls(channels, side, side, levels, num_classes)


@dataclass
class ImageSplit:
    images: Tensor  # uint8 (N, C, H, W), values in [0, levels)
    labels: Optional[Tensor]  # int64 (N,) class or identity ids, or (N, K) attributes; None if unlabelled

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "ImageSplit":
        labels = None if self.labels is None else self.labels.to(device)
        return ImageSplit(self.images.to(device), labels)


@dataclass
class ImageDataset:
    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    num_classes: Optional[int] = None  # set when labels are class ids usable for conditioning
    levels: int = 256
    dynamic_binarization: bool = False  # training batches are re-binarized on the fly

    @property
    def info(self) -> DataInfo:
        _, c, h, w = self.train.images.shape
        return DataInfo(channels=c, height=h, width=w, levels=self.levels, num_classes=self.num_classes)

    def to(self, device: torch.device) -> "ImageDataset":
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def describe(self) -> str:
        c, h, w = self.info.channels, self.info.height, self.info.width
        kind = "binarized" if self.levels == 2 else f"{self.levels}-level"
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        return (
            f"{self.name}: {c}x{h}x{w} {kind} images{classes}; "
            f"train {len(self.train)}, val {len(self.val)}, test {len(self.test)}"
        )


def resolve_root(root: Optional[str]) -> Path:
    """dataset.root, else $GENTRAIN_DATA, else ./data (relative paths are taken from the current directory)."""
    chosen = root or os.environ.get("GENTRAIN_DATA") or "data"
    return Path(chosen).expanduser().absolute()


def hold_out(split: ImageSplit, fraction: float, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Split off a seeded random `fraction` of `split` for validation -> (train, val)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"dataset.val_fraction must be in (0, 1), got {fraction}")
    n = len(split)
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ConfigError(f"dataset.val_fraction={fraction} leaves no training images out of {n}")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values

    def take(idx: Tensor) -> ImageSplit:
        return ImageSplit(split.images[idx], None if split.labels is None else split.labels[idx])

    return take(train_idx), take(val_idx)


def binarize_images(images: Tensor, seed: int) -> Tensor:
    """A seeded Bernoulli draw with p = pixel / 255 -> uint8 {0, 1}."""
    generator = torch.Generator().manual_seed(seed)
    probs = images.float() / 255.0
    return (torch.rand(probs.shape, generator=generator) < probs).to(torch.uint8)


def apply_binarization(dataset: ImageDataset, mode: Binarize, seed: int) -> ImageDataset:
    if mode is Binarize.none:
        return dataset
    if dataset.levels != 256:
        raise ConfigError(f"dataset.binarize={mode.value} needs 8-bit images")
    # Each split gets its own seed so that the draws are independent but reproducible.
    val = ImageSplit(binarize_images(dataset.val.images, seed + 1), dataset.val.labels)
    test = ImageSplit(binarize_images(dataset.test.images, seed + 2), dataset.test.labels)
    if mode is Binarize.dynamic:
        train = dataset.train  # stays 8-bit: the batcher draws a fresh binarization per batch
    else:
        train = ImageSplit(binarize_images(dataset.train.images, seed), dataset.train.labels)
    return replace(dataset, train=train, val=val, test=test, levels=2, dynamic_binarization=mode is Binarize.dynamic)
