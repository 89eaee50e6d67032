"""dataset=unpaired: two image domains A and B for translation models (CycleGAN), each any other dataset, a
half of one, a class subset or its inversion (255 - x).

Each side is loaded as its source dataset with its own train / val / test splits, then cut down. The
result's splits hold domain A in `images` and domain B in `other` (data/base.py: ImageSplit). Training
batches draw B in an order of its own (data/batches.py), so an image of A is never paired with one of B.
The sides' labels are kept in their own datasets (`domains`) for the per-domain FID features, not given to
the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from gentrain.data.base import ImageDataset, ImageSplit
from gentrain.data.schemas import DomainPart, UnpairedConfig, UnpairedSide
from gentrain.errors import DataError
from gentrain.registry import loads


def side_split(split: ImageSplit, side: UnpairedSide) -> ImageSplit:
    images, labels = split.images, split.labels
    if side.part is not DomainPart.all:
        half = len(images) // 2
        part = slice(0, half) if side.part is DomainPart.first_half else slice(half, None)
        images, labels = images[part], None if labels is None else labels[part]
    if side.classes is not None:
        keep = torch.isin(labels, torch.tensor(side.classes))
        images, labels = images[keep], labels[keep]
    if side.invert:
        images = 255 - images
    return ImageSplit(images, labels)


def load_side(cfg: UnpairedConfig, side: UnpairedSide, name: str) -> ImageDataset:
    from gentrain.composition import load_dataset

    source = load_dataset(cfg.side_config(side))
    if source.levels != 256:
        raise DataError(f"dataset.{name}: {source.name} is not 8-bit")
    splits = {split: side_split(getattr(source, split), side) for split in ("train", "val", "test")}
    for split, images in splits.items():
        if len(images) < 2:
            raise DataError(f"dataset.{name} ({side.source.value}, part={side.part.value}, "
                            f"classes={side.classes}) leaves {len(images)} images in its {split} split")
    return replace(source, **splits)  # keeps the source's name: FID's feature choice and caches go by it


def side_label(side: UnpairedSide) -> str:
    marks = ([f"classes {side.classes}"] * (side.classes is not None)
             + [side.part.value] * (side.part is not DomainPart.all))
    marks += ["inverted"] * side.invert
    return f"{side.source.value} ({', '.join(marks)})" if marks else side.source.value


@dataclass
class UnpairedDataset(ImageDataset):
    domains: tuple[ImageDataset, ...] = ()  # A and B as datasets of their own, labels included
    labels: tuple[str, ...] = ()  # what each domain is, for the log: "mnist (second_half, inverted)"

    def describe(self) -> str:
        (a, b), (label_a, label_b) = self.domains, self.labels
        return f"unpaired domains: A = {label_a}, {a.describe()}; B = {label_b}, {b.describe()}"


@loads(UnpairedConfig)
def load_unpaired(cfg: UnpairedConfig, root: Path) -> ImageDataset:
    a, b = load_side(cfg, cfg.a, "a"), load_side(cfg, cfg.b, "b")
    if a.info.channels != b.info.channels or a.info.height != b.info.height or a.info.width != b.info.width:
        raise DataError(f"dataset.a and dataset.b loaded images of different shapes: {a.describe()} / "
                        f"{b.describe()}")
    splits = {name: ImageSplit(getattr(a, name).images, None, getattr(b, name).images)
              for name in ("train", "val", "test")}
    labels = (side_label(cfg.a), side_label(cfg.b))
    return UnpairedDataset("unpaired", **splits, domains=(a, b), labels=labels)
