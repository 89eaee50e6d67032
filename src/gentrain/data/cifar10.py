"""CIFAR-10: 50,000 training and 10,000 test colour images, 32x32, from the official python batches.

The batches live in `<root>/cifar-10-batches-py/`. A full set is checked against the published md5s (an
error on mismatch unless dataset.verify=false). A partial set, such as a subset kept for offline tests,
loads with a warning naming what is missing; its checksums cannot match and are not required. Only when
no batch is present at all is the official archive downloaded (dataset.download=true).

The batches are pickles; they are read with an unpickler that only rebuilds numpy arrays, so a tampered
file cannot run code.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from gentrain.data.base import ImageDataset, ImageSplit, hold_out
from gentrain.data.schemas import CIFAR10Config
from gentrain.data.download import download, extract_tar, file_digest, missing_files_error
from gentrain.data.images import resized_cached
from gentrain.registry import loads
from gentrain.errors import DataError

log = logging.getLogger(__name__)

ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_BATCHES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
}
TEST_BATCH = {"test_batch": "40351d587109b95175f43aff81a1287e"}
FOLDER = "cifar-10-batches-py"


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds plain dicts, lists and numpy arrays, and refuses every other global."""

    allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official batch -> uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as err:  # a damaged pickle fails in many ways; the unpickler itself only builds arrays
        raise DataError(f"cannot read the CIFAR-10 batch {path}: {type(err).__name__}: {err} (truncated or "
                        f"corrupt?)") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path} is not a CIFAR-10 batch: data {data.shape}, labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path} holds labels outside the 10 CIFAR-10 classes "
                        f"({labels.min()}..{labels.max()}): corrupt or not a CIFAR-10 batch")
    return data.reshape(-1, 3, 32, 32), labels


def _ensure_files(folder: Path, cfg: CIFAR10Config) -> list[str]:
    """Make sure some batches exist (downloading when none do) -> names of the training batches present."""
    present = [name for name in TRAIN_BATCHES if (folder / name).exists()]
    if present and (folder / "test_batch").exists():
        return present
    if present:  # training batches but no test batch: do not overwrite a user's partial copy
        raise missing_files_error("CIFAR-10", folder, ["test_batch"])
    expected = [*TRAIN_BATCHES, *TEST_BATCH]
    if not cfg.download:
        raise missing_files_error("CIFAR-10", folder, expected, "(dataset.download=false)")
    archive = folder.parent / "cifar-10-python.tar.gz"
    try:
        download([cfg.url], archive, ARCHIVE_MD5)
    except DataError as err:
        raise DataError(f"{err}. {missing_files_error('CIFAR-10', folder, expected)}") from err
    extract_tar(archive, folder.parent)
    archive.unlink()
    return list(TRAIN_BATCHES)


@loads(CIFAR10Config)
def load_cifar10(cfg: CIFAR10Config, root: Path) -> ImageDataset:
    folder = root / FOLDER
    present = _ensure_files(folder, cfg)
    missing = [name for name in TRAIN_BATCHES if name not in present]
    if missing:
        log.warning(
            "CIFAR-10 in %s is a partial set: %s missing; loading the batches present. Checksums of a "
            "partial set cannot be verified.",
            folder,
            ", ".join(missing),
        )
    elif cfg.verify:
        for name, md5 in {**TRAIN_BATCHES, **TEST_BATCH}.items():
            if file_digest(folder / name) != md5:
                raise DataError(
                    f"{folder / name} does not match the published md5 {md5}: the file is corrupt or "
                    f"not the official one; delete the folder to re-download, or set dataset.verify=false "
                    f"to load it anyway"
                )

    def split(names: list[str]) -> ImageSplit:
        parts = [read_batch(folder / name) for name in names]
        return ImageSplit(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                          torch.from_numpy(np.concatenate([p[1] for p in parts])))

    train, val = hold_out(split(present), cfg.val_fraction, cfg.split_seed)
    splits = {"train": train, "val": val, "test": split(["test_batch"])}
    # After the hold-out: no full-size resized copy is ever made of the training set
    if cfg.image_size is not None:
        paths = [folder / name for name in [*present, "test_batch"]]
        splits = resized_cached(folder, "cifar10", paths, cfg.image_size, splits,
                                held_out=(cfg.val_fraction, cfg.split_seed))
    return ImageDataset("cifar10", splits["train"], splits["val"], splits["test"], num_classes=10)
