"""The fixed binarization of MNIST (Larochelle and Murray, 2011): the binarized MNIST that likelihood papers
report on (NADE, MADE, PixelCNN, PixelRNN, IWAE), `dataset=mnist dataset.binarize=fixed`.

Three text files, `binarized_mnist_{train,valid,test}.amat` (50,000, 10,000 and 10,000 rows of 784 values 0 or
1 separated by spaces, raster order), in `<root>/binarized_mnist/`, downloaded when missing and checked
against the sha256 digests TensorFlow Datasets publishes for them. Their splits are the published ones (no
hold-out is drawn) and they carry no labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from gentrain.data.base import ImageDataset, ImageSplit
from gentrain.data.download import download, file_digest, missing_files_error
from gentrain.errors import DataError

log = logging.getLogger(__name__)

FOLDER = "binarized_mnist"
# split -> (file, rows, sha256) as published with tensorflow_datasets (url_checksums/binarized_mnist.txt)
FILES = {
    "train": ("binarized_mnist_train.amat", 50_000,
              "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
    "val": ("binarized_mnist_valid.amat", 10_000,
            "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
    "test": ("binarized_mnist_test.amat", 10_000,
             "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
}
PIXELS = 28 * 28
ZERO, ONE = ord("0"), ord("1")
SEPARATORS = {ord(" "), ord("\t"), ord("\n"), ord("\r")}


def read_amat(path: Path) -> np.ndarray:
    """Rows of 784 values 0/1 separated by whitespace, one image per line -> uint8 (N, 784)."""
    try:
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err})") from None
    digits = (raw == ZERO) | (raw == ONE)
    others = np.unique(raw[~digits])
    if any(int(c) not in SEPARATORS for c in others):
        raise DataError(f"{path} holds characters other than 0, 1 and whitespace: not a binarized MNIST file")
    values = raw[digits] - ZERO
    rows = int(np.count_nonzero(raw == ord("\n"))) + (1 if raw.size and raw[-1] != ord("\n") else 0)
    if values.size != rows * PIXELS or rows == 0:
        raise DataError(f"{path} holds {values.size} values on {rows} lines, not {PIXELS} per line "
                        f"(truncated?)")
    return values.reshape(rows, PIXELS)


def _locate(folder: Path, name: str, digest: str, download_missing: bool, base_url: str) -> Path:
    path = folder / name
    if not path.exists():
        if not download_missing:
            raise missing_files_error("binarized MNIST", folder, [f for f, _, _ in FILES.values()],
                                      "(dataset.download=false)")
        try:
            download([base_url.rstrip("/") + "/" + name], path, digest, algorithm="sha256")
        except DataError as err:
            raise DataError(f"{err}. {missing_files_error('binarized MNIST', folder, [name])}") from err
    return path


def load_fixed_binarization(root: Path, *, download_missing: bool, verify: bool,
                            base_url: str) -> ImageDataset:
    folder = root / FOLDER
    splits = {}
    for split, (name, rows, digest) in FILES.items():
        path = _locate(folder, name, digest, download_missing, base_url)
        if verify and file_digest(path, "sha256") != digest:
            raise DataError(f"{path} does not match the published sha256 {digest} (corrupt or a different "
                            f"file): delete it to re-download, or set dataset.verify=false to load it anyway")
        images = read_amat(path)
        if verify and len(images) != rows:  # a matching digest has these rows; kept for a clear message
            raise DataError(f"{path} holds {len(images)} images, the published file {rows}")
        splits[split] = ImageSplit(torch.from_numpy(images).view(-1, 1, 28, 28), None)
    log.info("binarized MNIST (the fixed binarization of Larochelle and Murray): %s",
             ", ".join(f"{len(s.images):,} {k}" for k, s in splits.items()))
    return ImageDataset("mnist", splits["train"], splits["val"], splits["test"], num_classes=None, levels=2)
