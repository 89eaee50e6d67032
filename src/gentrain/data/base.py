"""What every dataset produces: uint8 images (N, C, H, W) with labels, split into train / val / test."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from gentrain.data.schemas import Binarize, DataInfo, UnpairedDataInfo
from gentrain.data.npyfile import spill
from gentrain.data.stored import DiskImages, keeps_in_memory, pixels, take
from gentrain.errors import ConfigError

log = logging.getLogger(__name__)

@dataclass
class ImageSplit:
    # uint8 (N, C, H, W), values in [0, levels); in memory or on disk (stored.py)
    images: Union[Tensor, DiskImages]
    labels: Optional[Tensor]  # int64 (N,) class or identity ids, or (N, K) attributes; None if unlabelled
    # unpaired data (data/unpaired.py): domain B's images (M, C, H, W), never paired with `images` by position
    other: Union[Tensor, DiskImages, None] = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "ImageSplit":
        labels = None if self.labels is None else self.labels.to(device)
        return ImageSplit(self.images.to(device), labels,
                          None if self.other is None else self.other.to(device))


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
        kind = DataInfo if self.train.other is None else UnpairedDataInfo
        return kind(channels=c, height=h, width=w, levels=self.levels, num_classes=self.num_classes)

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

    def rows(idx: Tensor) -> ImageSplit:
        return ImageSplit(take(split.images, idx), None if split.labels is None else split.labels[idx])

    return rows(train_idx), rows(val_idx)


def binarize_images(images: Tensor, seed: int) -> Tensor:
    """A seeded Bernoulli draw with p = pixel / 255 -> uint8 {0, 1}."""
    generator = torch.Generator().manual_seed(seed)
    probs = pixels(images).float() / 255.0
    return (torch.rand(probs.shape, generator=generator) < probs).to(torch.uint8)


def place(dataset: ImageDataset, in_memory: str, spill_dir: Path) -> ImageDataset:
    """Every split's images (and domain B's) in memory, or on disk to be read a batch at a time:
    dataset.in_memory (stored.keeps_in_memory). Arrays a loader built in memory are written to an anonymous
    file in `spill_dir` when they are to be streamed."""
    arrays = [a for s in (dataset.train, dataset.val, dataset.test) for a in (s.images, s.other)
              if a is not None]
    if keeps_in_memory(in_memory, sum(a.shape.numel() for a in arrays)):
        convert = pixels
    else:
        log.info("images are read from disk a batch at a time (dataset.in_memory=%s)", in_memory)
        convert = lambda a: a if isinstance(a, DiskImages) else spill(a, spill_dir)  # noqa: E731

    def split(s: ImageSplit) -> ImageSplit:
        return ImageSplit(convert(s.images), s.labels, None if s.other is None else convert(s.other))

    return replace(dataset, train=split(dataset.train), val=split(dataset.val), test=split(dataset.test))


def apply_binarization(dataset: ImageDataset, mode: Binarize, seed: int) -> ImageDataset:
    if mode is Binarize.none or mode is Binarize.fixed:  # fixed: the loader read published binary images
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
    return replace(dataset, train=train, val=val, test=test, levels=2,
                   dynamic_binarization=mode is Binarize.dynamic)
