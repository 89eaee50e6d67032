"""MNIST: 60,000 training and 10,000 test digits, 28x28 grey, read from the official IDX files.

The files live in `<root>/MNIST/raw/` (torchvision's layout, so an existing torchvision download is reused),
gzipped or not. Gzipped files are checked against the published md5s; when they are missing and
dataset.download is true they are fetched from the mirrors below.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np
import torch

from gentrain.data.base import ImageDataset, ImageSplit, hold_out
from gentrain.data.binarized_mnist import load_fixed_binarization
from gentrain.data.schemas import Binarize, MNISTConfig
from gentrain.data.download import download, file_digest, missing_files_error
from gentrain.data.images import resized_cached
from gentrain.registry import loads
from gentrain.errors import DataError

log = logging.getLogger(__name__)

FILES = {  # name -> md5 of the gzipped file, as published with torchvision
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
IDX_DTYPE = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): a magic number, the dimensions, then the raw values."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err} (the file is truncated or corrupt; "
                        "delete it to re-download)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPE:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (corrupt?)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(f"{path} holds {len(raw) - offset} values but its header says {expected} "
                        f"(truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _locate(raw_dir: Path, name: str, cfg: MNISTConfig) -> Path:
    """The file to read for `name`: the verified .gz when present, else the uncompressed file; when neither is
    there, the .gz downloaded."""
    gz = raw_dir / f"{name}.gz"
    plain = raw_dir / name
    if not gz.exists() and not plain.exists():
        archives = [f"{n}.gz" for n in FILES]
        if not cfg.download:
            raise missing_files_error("MNIST", raw_dir, archives, "(dataset.download=false)")
        try:
            download([m + gz.name for m in cfg.mirrors], gz, FILES[name])
        except DataError as err:
            raise DataError(f"{err}. {missing_files_error('MNIST', raw_dir, archives)}") from err
    if gz.exists():
        if cfg.verify and file_digest(gz) != FILES[name]:
            raise DataError(
                f"{gz} does not match the published md5 {FILES[name]} (corrupt or a different file): "
                f"delete it to re-download, or set dataset.verify=false to load it anyway"
            )
        return gz
    return plain


@loads(MNISTConfig)
def load_mnist(cfg: MNISTConfig, root: Path) -> ImageDataset:
    if cfg.binarize is Binarize.fixed:
        return load_fixed_binarization(root, download_missing=cfg.download, verify=cfg.verify,
                                       base_url=cfg.binarized_url)
    raw_dir = root / "MNIST" / "raw"
    files = {name: _locate(raw_dir, name, cfg) for name in FILES}
    arrays = {name: read_idx(path) for name, path in files.items()}
    images, labels = {}, {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[1:] != (28, 28):
            raise DataError(f"MNIST {prefix}-images and {prefix}-labels disagree: {x.shape} images, "
                            f"{y.shape} labels (expected N x 28 x 28 images and N labels)")
        if y.size and y.max() > 9:
            raise DataError(f"MNIST {prefix}-labels holds the label {int(y.max())}: digits are 0-9 "
                            f"(corrupt file?)")
        images[split] = torch.from_numpy(x.copy()).unsqueeze(1)
        labels[split] = torch.from_numpy(y.astype(np.int64))
    train, val = hold_out(ImageSplit(images["train"], labels["train"]), cfg.val_fraction, cfg.split_seed)
    splits = {"train": train, "val": val, "test": ImageSplit(images["test"], labels["test"])}
    # resized after the hold-out, so that no resized copy of the full training split is ever made
    if cfg.image_size is not None:
        splits = resized_cached(raw_dir, "mnist", list(files.values()), cfg.image_size, splits,
                                held_out=(cfg.val_fraction, cfg.split_seed))
    return ImageDataset("mnist", splits["train"], splits["val"], splits["test"], num_classes=10)
