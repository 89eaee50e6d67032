"""The options of every dataset, and what each will load (`data_info()`), known before any file is read.

Torch-free, like the models' schemas (gentrain/models/schemas/): composing a config never imports torch. Each
config class names its dataset (@dataset_config); its loader attaches with @loads (mnist.py, cifar10.py, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

from omegaconf import MISSING

from gentrain.config import SEED_MAX, setting
from gentrain.registry import dataset_config

IMAGE_SIZE = {"min": 8, "max": 1024}  # the rule of every dataset.image_size: a side in pixels
URL_PATTERN = r"(https?|ftp|file)://\S+"
MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def resolve_root(root: Optional[str]) -> Path:
    """dataset.root, else $GENTRAIN_DATA, else ./data (relative paths are taken from the current directory)."""
    chosen = root or os.environ.get("GENTRAIN_DATA") or "data"
    return Path(chosen).expanduser().absolute()


class Binarize(Enum):
    none = "none"  # keep the 8-bit values
    static = "static"  # one seeded Bernoulli draw per image, fixed for the whole run
    dynamic = "dynamic"  # a fresh draw for every training batch; validation and test use the static draw


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


@dataclass
class DatasetConfig:
    """Settings every dataset shares."""

    binarize: Binarize = Binarize.none
    split_seed: int = setting(0, min=0, max=SEED_MAX)  # seeds held-out splits and static binarization

    def data_info(self) -> DataInfo:
        """The shape, levels and classes of what this config loads (models are built and checked first)."""
        raise NotImplementedError

    def _square(self, channels: int, side: int, num_classes: Optional[int]) -> DataInfo:
        return DataInfo(channels, side, side, 256 if self.binarize is Binarize.none else 2, num_classes)


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


@dataset_config("mnist")
@dataclass
class MNISTConfig(OfficialDatasetConfig):
    """MNIST, 28x28 grey, 60k train (10% held out for validation) + 10k test (mnist.py)."""

    val_fraction: float = setting(0.1, above=0, below=1)  # share of the training split held out for validation
    image_size: Optional[int] = setting(None, **IMAGE_SIZE)  # null keeps 28x28; 32 or 64 resizes (antialiased)
    mirrors: list[str] = setting(factory=lambda: list(MNIST_MIRRORS), min_items=1, pattern=URL_PATTERN)

    def data_info(self) -> DataInfo:
        return self._square(1, self.image_size or 28, 10)


@dataset_config("cifar10")
@dataclass
class CIFAR10Config(OfficialDatasetConfig):
    """CIFAR-10, 32x32 colour, 50k train (10% held out for validation) + 10k test (cifar10.py)."""

    val_fraction: float = setting(0.1, above=0, below=1)  # share of the training split held out for validation
    image_size: Optional[int] = setting(None, **IMAGE_SIZE)  # null keeps 32x32
    url: str = setting(CIFAR10_URL, pattern=URL_PATTERN)

    def data_info(self) -> DataInfo:
        return self._square(3, self.image_size or 32, 10)


class CelebALabels(Enum):
    identity = "identity"  # the person's id (identity_CelebA.txt); not classes for conditioning
    attributes = "attributes"  # 40 binary attributes (list_attr_celeba.txt)
    none = "none"


@dataset_config("celeba")
@dataclass
class CelebAConfig(OfficialDatasetConfig):
    """CelebA aligned faces, centre-cropped and resized, official partition (celeba.py)."""

    image_size: int = setting(64, **IMAGE_SIZE)
    crop: Optional[int] = setting(148, min=1, max=4096)  # side of the centre crop before resizing; null = the short side
    labels: CelebALabels = CelebALabels.identity

    def data_info(self) -> DataInfo:
        return self._square(3, self.image_size, None)  # identities and attributes are not classes


@dataset_config("folder")
@dataclass
class FolderConfig(DatasetConfig):
    """Any folder of PNG/JPEG images, optionally one sub-folder per class (folder.py)."""

    path: str = setting(MISSING, path="dir")  # the image folder (required)
    image_size: int = setting(64, **IMAGE_SIZE)
    crop: Optional[int] = setting(None, min=1, max=4096)  # centre crop side before resizing; null = the short side
    channels: int = setting(3, choices=(1, 3))  # 3 = RGB, 1 = greyscale
    val_fraction: float = setting(0.05, above=0, below=1)
    test_fraction: float = setting(0.05, above=0, below=1)

    def problems(self, prefix: str) -> Iterator[str]:
        if self.val_fraction + self.test_fraction >= 1.0:
            yield f"{prefix}val_fraction + {prefix}test_fraction must be below 1 (nothing would be left to train on)"

    def data_info(self) -> DataInfo:
        from gentrain.data.folder import find_images  # listing the folder, no image decoded: are there classes?

        _, _, classes = find_images(Path(self.path).expanduser().absolute())
        return self._square(self.channels, self.image_size, len(classes) or None)
