"""CelebA aligned faces (178x218 JPEGs), centre-cropped and resized, with the official train/valid/test
partition.

Files in `<root>/celeba/`: `img_align_celeba/*.jpg` and `list_eval_partition.txt` are required;
`identity_CelebA.txt` and `list_attr_celeba.txt` are read when labels ask for them. The decoded uint8 array is
cached (beside the data when that folder is writable, else in ~/.cache/gentrain), so only the first run pays
for decoding. A subset (fewer images than the official 202,599) loads with a warning; its listing files
cannot match the published checksums.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gentrain.data.base import ImageDataset, ImageSplit
from gentrain.data.schemas import CelebAConfig, CelebALabels
from gentrain.data.download import file_digest, missing_files_error
from gentrain.data.images import decoded_cached, file_fingerprint
from gentrain.data.stored import take
from gentrain.registry import loads
from gentrain.errors import DataError

log = logging.getLogger(__name__)

FULL_SIZE = 202_599
# Google Drive ids and md5s of the official files (as published with torchvision).
GDRIVE_FILES = {
    "img_align_celeba.zip": ("0B7EVK8r0v71pZjFTYXZWM3FlRnM", "00d2c5bc6d35e252742224ab0c1e8fcb"),
    "list_eval_partition.txt": ("0B7EVK8r0v71pY0NSMzRuSXJEVkk", "d32c9cbf5e040fd4025c592c306e6668"),
    "identity_CelebA.txt": ("1_ee_0u7vcNLOfNLegJRHmolfH5ICW-XS", "32bd1bd63d3c78cd57e08160ec5ed1e2"),
    "list_attr_celeba.txt": ("0B7EVK8r0v71pblRyaVFSWGxPY0U", "75e246fa4810816ffd6ee81facbd244c"),
}


def _download(folder: Path, name: str) -> None:
    from torchvision.datasets.utils import download_file_from_google_drive

    file_id, md5 = GDRIVE_FILES[name]
    try:
        download_file_from_google_drive(file_id, str(folder), name, md5)
    except Exception as err:  # torchvision raises several types for network, quota and checksum failures
        raise DataError(f"could not download {name} from Google Drive ({err})") from err
    if file_digest(folder / name) != md5:
        (folder / name).unlink()
        raise DataError(f"the downloaded {name} does not match the published md5 {md5}")


def _ensure_files(folder: Path, cfg: CelebAConfig, labels_file: Optional[str]) -> None:
    needed = ["img_align_celeba/", "list_eval_partition.txt"] + ([labels_file] if labels_file else [])
    missing = [n for n in needed if not (folder / n.rstrip("/")).exists()]
    if not missing:
        return
    if not cfg.download:
        raise missing_files_error("CelebA", folder, missing, "(dataset.download=false)")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for name in missing:
            if name == "img_align_celeba/":
                _download(folder, "img_align_celeba.zip")
                with zipfile.ZipFile(folder / "img_align_celeba.zip") as archive:
                    archive.extractall(folder)
                (folder / "img_align_celeba.zip").unlink()
            else:
                _download(folder, name)
    except DataError as err:
        raise DataError(f"{err}. {missing_files_error('CelebA', folder, missing)}") from err


def _read_listing(path: Path) -> dict[str, list[str]]:
    """'000001.jpg value ...' lines -> {file name: values}; attribute files have two header lines."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if lines and lines[0].strip().isdigit():  # list_attr_celeba.txt: a count, then attribute names
        lines = lines[2:]
    out = {}
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DataError(f"{path}, line {number}: expected '<file> <value>', got {line!r}")
        out[parts[0]] = parts[1:]
    return out


@loads(CelebAConfig)
def load_celeba(cfg: CelebAConfig, root: Path) -> ImageDataset:
    folder = root / "celeba"
    labels_file = {
        CelebALabels.identity: "identity_CelebA.txt",
        CelebALabels.attributes: "list_attr_celeba.txt",
        CelebALabels.none: None,
    }[cfg.labels]
    _ensure_files(folder, cfg, labels_file)
    partition = _read_listing(folder / "list_eval_partition.txt")
    names = sorted(partition)
    image_dir = folder / "img_align_celeba"
    absent = [n for n in names if not (image_dir / n).exists()]
    if absent:
        shown = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
        raise DataError(f"{len(absent)} image(s) listed in list_eval_partition.txt are missing from "
                        f"{image_dir}: {shown}")

    if len(names) < FULL_SIZE:
        log.warning(
            "CelebA in %s is a subset (%d of %d images); its listing files cannot match the published "
            "checksums",
            folder, len(names), FULL_SIZE,
        )
    elif cfg.verify:
        for name in ["list_eval_partition.txt"] + ([labels_file] if labels_file else []):
            if file_digest(folder / name) != GDRIVE_FILES[name][1]:
                raise DataError(
                    f"{folder / name} does not match the published md5: corrupt or not the official file "
                    f"(set dataset.verify=false to load it anyway)"
                )

    paths = [image_dir / n for n in names]
    key = {"dataset": "celeba", "size": cfg.image_size, "crop": cfg.crop, "files": file_fingerprint(paths)}
    images = decoded_cached(folder, "celeba", key, paths, cfg.image_size, cfg.crop, channels=3)

    labels = None
    if labels_file:
        listing = _read_listing(folder / labels_file)
        unlabelled = [n for n in names if n not in listing]
        if unlabelled:
            raise DataError(f"{labels_file} has no entry for {len(unlabelled)} image(s), "
                            f"e.g. {unlabelled[0]}")
        if cfg.labels is CelebALabels.identity:
            labels = torch.tensor([int(listing[n][0]) for n in names], dtype=torch.int64)
        else:
            labels = torch.tensor([[v == "1" for v in listing[n]] for n in names], dtype=torch.int64)

    which = np.array([int(partition[n][0]) for n in names])

    def split(code: int) -> ImageSplit:
        idx = torch.from_numpy(np.flatnonzero(which == code))
        if len(idx) == 0:
            raise DataError(f"list_eval_partition.txt in {folder} assigns no image to partition {code}")
        return ImageSplit(take(images, idx), None if labels is None else labels[idx])

    return ImageDataset("celeba", split(0), split(1), split(2), num_classes=None)
