"""Decoding image files, a chunk per task of a worker process (gentrain.data.images drives it): PIL and NumPy
only, nothing a forked worker could inherit half-initialised from torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image


def decode_one(path: Path, size: int, crop: Optional[int], channels: int) -> np.ndarray:
    """Centre-crop (to `crop`, or the short side) and resize one file -> uint8 (C, size, size)."""
    with Image.open(path) as image:
        image = image.convert("RGB" if channels == 3 else "L")
        width, height = image.size
        side = min(width, height) if not crop else min(crop, width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
        array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_chunk(paths: Sequence[Path], size: int, crop: Optional[int], channels: int
                 ) -> tuple[np.ndarray, list[str]]:
    """-> the decoded images (zeros where a file failed) and 'name (error)' for each file that failed."""
    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    failures = []
    for i, path in enumerate(paths):
        try:
            out[i] = decode_one(path, size, crop, channels)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            failures.append(f"{path.name} ({err})")
    return out, failures
