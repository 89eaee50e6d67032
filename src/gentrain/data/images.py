"""Decoding image files once: centre-crop, resize, and cache the uint8 array so later runs start in seconds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gentrain.progress import track
from gentrain.errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused


def resize_images(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 images (N, C, H, W) to size x size, a chunk at a time straight into a
    uint8 result: memory holds the result and one chunk of floats (70,000 MNIST digits resized at once went
    through 3 GB of float copies)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        resized = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = resized.round_().clamp_(0, 255)
    return out


def resized_cached(data_dir: Path, name: str, sources: Sequence[Path], size: int, splits: dict[str, Any],
                   held_out: tuple[float, int]) -> dict[str, Any]:
    """The splits (name -> ImageSplit) with their images resized to size x size, cached under the fingerprint of
    the files they were read from and how the validation split was held out: the second run at that size loads
    the result instead of resizing again."""
    key = {"dataset": name, "size": size, "files": file_fingerprint(sources), "held_out": list(held_out)}
    resized = cached_arrays(
        data_dir, f"{name}-{size}px", key,
        lambda: {k: resize_images(s.images, size).numpy() for k, s in splits.items()},
        shapes={k: (len(s), s.images.shape[1], size, size) for k, s in splits.items()},
    )
    return {k: replace(s, images=torch.from_numpy(resized[k])) for k, s in splits.items()}


def _decode_one(path: Path, size: int, crop: Optional[int], channels: int) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB" if channels == 3 else "L")
        width, height = image.size
        side = min(width, height) if not crop else min(crop, width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
        array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_images(paths: Sequence[Path], size: int, crop: Optional[int], channels: int, desc: str) -> np.ndarray:
    """Decode, centre-crop (to `crop`, or the short side) and resize every file -> uint8 (N, C, size, size).

    Unreadable files are collected and reported together, by name.
    """
    failures: list[str] = []

    def load(path: Path) -> Optional[np.ndarray]:
        try:
            return _decode_one(path, size, crop, channels)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            failures.append(f"{path.name} ({err})")
            return None

    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        for i, array in enumerate(track(pool.map(load, paths), desc, total=len(paths), unit="img")):
            if array is not None:
                out[i] = array
    if failures:
        shown = ", ".join(failures[:10]) + (f" and {len(failures) - 10} more" if len(failures) > 10 else "")
        raise DataError(f"{len(failures)} image file(s) could not be read in {paths[0].parent}: {shown}")
    return out


def file_fingerprint(paths: Sequence[Path]) -> str:
    """A digest of names, sizes and modification times: changes when any file does."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def cache_dir_for(data_dir: Path) -> Optional[Path]:
    """Beside the data when that folder is writable, else the user's cache directory.

    A folder without write permission bits counts as read-only even for root, who could write into it anyway:
    shared, read-only dataset folders stay untouched.
    """
    if os.access(data_dir, os.W_OK) and data_dir.stat().st_mode & 0o222:
        return data_dir / ".gentrain_cache"
    base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return base / "gentrain"


def cached_arrays(
    data_dir: Path, name: str, key: dict, build: Callable[[], dict[str, np.ndarray]],
    shapes: Optional[dict[str, tuple]] = None,
) -> dict[str, np.ndarray]:
    """Return the arrays cached under `key`, building and saving them (atomically) on the first call.

    A damaged cache (unreadable, truncated, or arrays of other shapes than `shapes`, where None in a shape matches
    any length) is rebuilt with a warning."""
    key = {**key, "version": CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = cache_dir_for(data_dir)
    path = cache_dir / f"{name}-{digest}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {k: stored[k] for k in stored.files}
            for k, shape in (shapes or {}).items():
                found = arrays[k].shape
                if arrays[k].dtype != np.uint8 or len(found) != len(shape) or any(
                        s is not None and s != f for s, f in zip(shape, found)):
                    raise ValueError(f"{k} has shape {found} {arrays[k].dtype}, expected {shape} uint8")
            log.info("loaded decoded %s from the cache %s", name, path)
            return arrays
        except Exception as err:  # a damaged file fails in many ways (zip, zlib, header, key); rebuild it
            log.warning("the cache %s is damaged (%s: %s); decoding again", path, type(err).__name__, err)
    arrays = build()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        log.info("cached decoded %s in %s", name, path)
    except OSError as err:
        log.warning("could not cache decoded %s in %s (%s); the next run decodes again", name, cache_dir, err)
    return arrays
