"""The options of every dataset, and what each will load (`data_info()`), known before any file is read.

Torch-free, like the models' schemas (gentrain/models/schemas/): composing a config never imports torch. Each
config class names its dataset (@dataset_config); its loader attaches with @loads (mnist.py, cifar10.py, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import ClassVar, Iterator, Optional

from omegaconf import MISSING

from gentrain.config import SEED_MAX, setting
from gentrain.registry import dataset_config

IMAGE_SIZE = {"min": 8, "max": 1024}  # the rule of every dataset.image_size: a side in pixels
URL_PATTERN = r"(https?|ftp|file)://\S+"
MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"


def resolve_root(root: Optional[str]) -> Path:
    """dataset.root, else $GENTRAIN_DATA, else ./data.

    A relative path is taken from the current directory."""
    chosen = root or os.environ.get("GENTRAIN_DATA") or "data"
    return Path(chosen).expanduser().absolute()


class Binarize(Enum):
    none = "none"  # keep the 8-bit values
    static = "static"  # one seeded Bernoulli draw per image, fixed for the whole run
    dynamic = "dynamic"  # a fresh draw for every training batch; validation and test use the static draw
    # MNIST only: the standard binarized MNIST of Larochelle and Murray (2011), its own 50k / 10k / 10k splits
    fixed = "fixed"


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data to build itself."""

    channels: int
    height: int
    width: int
    levels: int  # 256 for 8-bit images, 2 for binarized ones
    num_classes: Optional[int]  # classes a conditional model can use; None when the data has none
    # image domains per example: 2 for unpaired translation data (UnpairedDataInfo)
    domains: ClassVar[int] = 1

    @property
    def num_dims(self) -> int:
        return self.channels * self.height * self.width


@dataclass(frozen=True)
class UnpairedDataInfo(DataInfo):
    """Two domains of images of the same shape (dataset=unpaired), for translation models."""

    domains: ClassVar[int] = 2


@dataclass
class DatasetConfig:
    """Settings every dataset shares."""

    binarize: Binarize = Binarize.none
    split_seed: int = setting(0, min=0, max=SEED_MAX)  # seeds held-out splits and static binarization
    # true: every split in memory (on the GPU when training there); false: read from disk a batch at a time
    # (data/stored.py); auto: in memory when the images take at most half of the free host (and GPU) memory
    in_memory: str = setting("auto", pattern=r"(?i)auto|true|false", meaning="auto, true or false")
    has_fixed_binarization: ClassVar[bool] = False  # binarize=fixed: published binarized files (MNIST's)

    def data_info(self) -> DataInfo:
        """The shape, levels and classes of what this config loads (models are built and checked first)."""
        raise NotImplementedError

    def problems(self, prefix: str) -> Iterator[str]:
        if self.binarize is Binarize.fixed and not self.has_fixed_binarization:
            yield (f"{prefix}binarize=fixed is the standard binarized MNIST (Larochelle and Murray): "
                   f"use it with dataset=mnist; static or dynamic binarize any 8-bit images")

    def _square(self, channels: int, side: int, num_classes: Optional[int]) -> DataInfo:
        return DataInfo(channels, side, side, 256 if self.binarize is Binarize.none else 2, num_classes)


@dataclass
class OfficialDatasetConfig(DatasetConfig):
    """A published dataset with known files and checksums."""

    root: Optional[str] = None  # null: $GENTRAIN_DATA, else ./data
    download: bool = True  # fetch missing files (with a progress bar) and verify their published md5
    verify: bool = True  # check md5s of a full official set; false loads files that do not match

    def problems(self, prefix: str) -> Iterator[str]:
        yield from super().problems(prefix)
        root = resolve_root(self.root)
        if self.root:
            named = f"{prefix}root={self.root}"
        else:
            named = f"the data folder {root} ($GENTRAIN_DATA or ./data)"
        if root.exists() and not root.is_dir():
            yield f"{named} is not a folder"
        elif not root.exists() and not self.download:
            yield f"{named} does not exist (and {prefix}download=false)"


@dataset_config("mnist")
@dataclass
class MNISTConfig(OfficialDatasetConfig):
    """MNIST, 28x28 grey, 60k train (10% held out for validation) + 10k test (mnist.py); binarize=fixed: the
    published binarized MNIST, 50k / 10k / 10k (binarized_mnist.py)."""

    has_fixed_binarization: ClassVar[bool] = True

    val_fraction: float = setting(0.1, above=0, below=1)  # of the training split, held out for validation
    # null keeps 28x28; a side (32, 64) resizes with antialiasing
    image_size: Optional[int] = setting(None, **IMAGE_SIZE)
    mirrors: list[str] = setting(factory=lambda: list(MNIST_MIRRORS), min_items=1, pattern=URL_PATTERN)
    binarized_url: str = setting(BINARIZED_MNIST_URL, pattern=URL_PATTERN)  # binarize=fixed: the .amat files

    def problems(self, prefix: str) -> Iterator[str]:
        yield from super().problems(prefix)
        if self.binarize is Binarize.fixed and self.image_size is not None:
            yield (f"{prefix}binarize=fixed keeps the published 28x28 binary images: "
                   f"leave {prefix}image_size null")

    def data_info(self) -> DataInfo:
        if self.binarize is Binarize.fixed:
            return DataInfo(1, 28, 28, 2, None)  # the published files carry no labels
        return self._square(1, self.image_size or 28, 10)


@dataset_config("cifar10")
@dataclass
class CIFAR10Config(OfficialDatasetConfig):
    """CIFAR-10, 32x32 colour, 50k train (10% held out for validation) + 10k test (cifar10.py)."""

    val_fraction: float = setting(0.1, above=0, below=1)  # of the training split, held out for validation
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
    # side of the centre crop before resizing; null = the short side
    crop: Optional[int] = setting(148, min=1, max=4096)
    labels: CelebALabels = CelebALabels.identity

    def data_info(self) -> DataInfo:
        return self._square(3, self.image_size, None)  # identities and attributes are not classes


@dataset_config("folder")
@dataclass
class FolderConfig(DatasetConfig):
    """Any folder of PNG/JPEG images, optionally one sub-folder per class (folder.py)."""

    path: str = setting(MISSING, path="dir")  # the image folder (required)
    image_size: int = setting(64, **IMAGE_SIZE)
    # side of the centre crop before resizing; null = the short side
    crop: Optional[int] = setting(None, min=1, max=4096)
    channels: int = setting(3, choices=(1, 3))  # 3 = RGB, 1 = greyscale
    val_fraction: float = setting(0.05, above=0, below=1)
    test_fraction: float = setting(0.05, above=0, below=1)

    def problems(self, prefix: str) -> Iterator[str]:
        yield from super().problems(prefix)
        if self.val_fraction + self.test_fraction >= 1.0:
            yield (f"{prefix}val_fraction + {prefix}test_fraction must be below 1 "
                   f"(nothing would be left to train on)")

    def data_info(self) -> DataInfo:
        # are there classes? A listing of the folder says, without decoding an image
        from gentrain.data.folder import find_images

        _, _, classes = find_images(Path(self.path).expanduser().absolute())
        return self._square(self.channels, self.image_size, len(classes) or None)


class DomainPart(Enum):
    all = "all"
    first_half = "first_half"  # the first half of every split (by position)
    # the rest: disjoint from first_half, so the two sides of one dataset share no image
    second_half = "second_half"


class DomainSource(Enum):
    mnist = "mnist"
    cifar10 = "cifar10"
    celeba = "celeba"
    folder = "folder"


@dataclass
class UnpairedSide:
    """One domain of dataset=unpaired: any dataset, or a part, a class subset or the inversion of one."""

    source: DomainSource = DomainSource.mnist
    path: Optional[str] = setting(None, path="dir")  # source=folder: the image folder
    classes: Optional[list[int]] = setting(None, min_items=1, min=0, max=1000)  # keep these classes only
    part: DomainPart = DomainPart.all
    invert: bool = False  # 255 - x: e.g. MNIST against inverted MNIST, a translation with a known answer


@dataset_config("unpaired")
@dataclass
class UnpairedConfig(DatasetConfig):
    """Two unpaired image domains A and B (data/unpaired.py), each with its own train / val / test splits;
    training batches draw each side independently. The shared options below apply to both sources."""

    a: UnpairedSide = field(default_factory=lambda: UnpairedSide(part=DomainPart.first_half))
    b: UnpairedSide = field(default_factory=lambda: UnpairedSide(part=DomainPart.second_half, invert=True))
    root: Optional[str] = None  # official datasets: null = $GENTRAIN_DATA, else ./data
    download: bool = True
    verify: bool = True
    image_size: Optional[int] = setting(None, **IMAGE_SIZE)  # null: each source's own (folder: 64)
    channels: int = setting(3, choices=(1, 3))  # folder sources: 3 = RGB, 1 = greyscale

    def side_config(self, side: UnpairedSide) -> DatasetConfig:
        """The config of a side's source dataset, with the shared options that source has."""
        from gentrain.registry import configs

        source = configs("dataset")[side.source.value]
        # a side is cut and inverted in memory (in_memory=true); the pair follows self.in_memory
        shared = {"root": self.root, "download": self.download, "verify": self.verify,
                  "channels": self.channels, "split_seed": self.split_seed, "path": side.path,
                  "in_memory": "true"}
        if self.image_size is not None:
            shared["image_size"] = self.image_size
        names = {f.name for f in fields(source)}
        return source(**{key: value for key, value in shared.items() if key in names})

    def problems(self, prefix: str) -> Iterator[str]:
        from gentrain.config import problems

        if self.binarize is not Binarize.none:
            yield (f"{prefix}binarize={self.binarize.value}: unpaired domains stay 8-bit "
                   f"(binarize is not supported)")
            return
        infos = {}
        for name in ("a", "b"):
            side = getattr(self, name)
            if side.source is DomainSource.folder and side.path is None:
                yield f"{prefix}{name}.path is required when {prefix}{name}.source=folder"
                return
            config = self.side_config(side)
            found = next(problems(config, prefix), None)
            if found is not None:
                yield found
                return
            infos[name] = config.data_info()
            if side.classes is not None and not infos[name].num_classes:
                yield f"{prefix}{name}.classes: {side.source.value} has no classes to choose from"
            elif side.classes is not None and max(side.classes) >= infos[name].num_classes:
                yield (f"{prefix}{name}.classes={side.classes}: {side.source.value} has classes 0 to "
                       f"{infos[name].num_classes - 1}")
        shape = {name: (info.channels, info.height, info.width) for name, info in infos.items()}
        if shape["a"] != shape["b"]:
            yield (f"{prefix}a gives {shape['a'][0]}x{shape['a'][1]}x{shape['a'][2]} images and {prefix}b "
                   f"{shape['b'][0]}x{shape['b'][1]}x{shape['b'][2]}: both domains need one shape (set "
                   f"{prefix}image_size, and {prefix}channels for folders)")

    def data_info(self) -> DataInfo:
        info = self.side_config(self.a).data_info()
        return UnpairedDataInfo(info.channels, info.height, info.width, 256, None)
