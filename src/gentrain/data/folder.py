"""Any folder of PNG/JPEG images, optionally with one sub-folder per class.

Images are centre-cropped to a square, resized and cached like CelebA; validation and test images are held
out at random (seeded), since a plain folder has no official split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from gentrain.data.base import ImageDataset, ImageSplit, hold_out
from gentrain.data.schemas import FolderConfig
from gentrain.data.images import decoded_cached, file_fingerprint
from gentrain.registry import loads
from gentrain.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = {".png", ".jpg", ".jpeg"}


def find_images(folder: Path) -> tuple[list[Path], Optional[list[int]], list[str]]:
    """-> image paths, class ids (when every image sits in a class sub-folder) and class names."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not paths:
        raise DataError(f"no PNG or JPEG images found under {folder}")
    parents = {p.parent for p in paths}
    if folder not in parents and all(p.parent.parent == folder for p in paths):
        classes = sorted(p.name for p in parents)
        index = {name: i for i, name in enumerate(classes)}
        return paths, [index[p.parent.name] for p in paths], classes
    return paths, None, []


@loads(FolderConfig)
def load_folder(cfg: FolderConfig, root: Path) -> ImageDataset:
    del root  # a folder dataset names its own path
    folder = Path(cfg.path).expanduser().absolute()
    if not folder.is_dir():
        raise DataError(f"dataset.path={cfg.path} is not a folder")
    paths, class_ids, classes = find_images(folder)
    key = {
        "dataset": "folder", "folder": str(folder), "size": cfg.image_size, "crop": cfg.crop,
        "channels": cfg.channels, "files": file_fingerprint(paths),
    }
    images = decoded_cached(folder, f"folder-{folder.name}", key, paths, cfg.image_size, cfg.crop,
                            cfg.channels)
    labels = None if class_ids is None else torch.tensor(class_ids, dtype=torch.int64)
    everything = ImageSplit(images, labels)  # on disk: the splits below are views, read when needed
    rest, test = hold_out(everything, cfg.test_fraction, cfg.split_seed)
    train, val = hold_out(rest, cfg.val_fraction / (1.0 - cfg.test_fraction), cfg.split_seed + 1)
    if classes:
        log.info("folder dataset %s: %d classes from sub-folders (%s)", folder, len(classes),
                 ", ".join(classes[:10]))
    return ImageDataset(f"folder:{folder.name}", train, val, test, num_classes=len(classes) or None)
