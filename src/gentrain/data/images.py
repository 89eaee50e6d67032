"""Decoding image files once: centre-crop, resize, and cache the uint8 array so later runs start in
seconds."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from gentrain.progress import Progress
from gentrain.runtime import available_cores
from gentrain.data.cache import ArrayFiles, cached_arrays
from gentrain.data.cache import cache_dir_for  # noqa: F401 (imported from here by its callers)
from gentrain.data.npyfile import NpyFile
from gentrain.data.stored import DiskImages
from gentrain.errors import DataError
from gentrain.files import write_file
from gentrain.forked import die_with_parent

log = logging.getLogger(__name__)


def resize_images(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 images (N, C, H, W) to size x size, a chunk at a time straight
    into a uint8 result: memory holds the result and one chunk of floats (70,000 MNIST digits resized at once
    went through 3 GB of float copies)."""
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
    """The splits (name -> ImageSplit) with their images resized to size x size, cached under the fingerprint
    of the files they were read from and how the validation split was held out: the second run at that size
    loads the result instead of resizing again."""
    key = {"dataset": name, "size": size, "files": file_fingerprint(sources), "held_out": list(held_out)}
    shapes = {k: (len(s), s.images.shape[1], size, size) for k, s in splits.items()}

    def build(files: ArrayFiles) -> None:
        for k, s in splits.items():
            with files.create(k, shapes[k]) as out:
                out[0 : len(s)] = resize_images(s.images, size)

    resized = cached_arrays(data_dir, f"{name}-{size}px", key, build, shapes)
    return {k: replace(s, images=resized[k]) for k, s in splits.items()}


DECODE_CHUNK = 256  # images per task of a decoding worker, and between two progress records


def decode_images(paths: Sequence[Path], size: int, crop: Optional[int], channels: int, desc: str,
                  out: Union[np.ndarray, NpyFile, None] = None, done: int = 0,
                  on_chunk: Optional[Callable[[int], None]] = None) -> Union[np.ndarray, NpyFile]:
    """Decode, centre-crop (to `crop`, or the short side) and resize every file -> uint8 (N, C, size, size).

    Large sets are decoded in worker processes, chunk by chunk in order, into `out` (an array in
    memory, or the cache's NpyFile); `done` images are already there (an interrupted decoding
    continues), and `on_chunk` hears how many are done after each chunk. Unreadable files are
    collected and reported together, by name.
    """
    from gentrain.data.decode import decode_chunk

    out = np.empty((len(paths), channels, size, size), dtype=np.uint8) if out is None else out
    starts = list(range(done, len(paths), DECODE_CHUNK))
    workers = min(8, available_cores(), len(starts))
    failures: list[str] = []
    # Processes, not threads: PIL's resize holds the GIL. Forked, as DataLoader workers are: a spawned worker
    # would import the caller's main module again. Small sets are decoded here, where starting workers costs
    # more.
    # Workers die with this process, even by kill -9 (forked.py): orphans would sleep forever.
    forking = "fork" in multiprocessing.get_all_start_methods()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=die_with_parent, initargs=(os.getpid(),)) \
        if forking and workers > 1 and len(paths) - done > 4 * DECODE_CHUNK else None
    try:
        decode = functools.partial(decode_chunk, size=size, crop=crop, channels=channels)
        chunks = [paths[s : s + DECODE_CHUNK] for s in starts]
        results = pool.map(decode, chunks) if pool else map(decode, chunks)
        with Progress(len(paths), desc, unit="img", initial=done) as progress:
            for start, (images, failed) in zip(starts, results):
                out[start : start + len(images)] = images
                failures += failed
                progress.update(len(images))
                if on_chunk is not None and not failures:
                    on_chunk(start + len(images))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
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


def decoded_cached(data_dir: Path, name: str, key: dict, paths: Sequence[Path], size: int,
                   crop: Optional[int], channels: int) -> DiskImages:
    """Every file of `paths` decoded once into the cache (decode_images), continuing an interrupted
    decoding where it stopped: the images file is written in place, and `images.done` records how
    many are in it once they are on disk."""
    shape = (len(paths), channels, size, size)

    def build(files: ArrayFiles) -> None:
        record = files.folder / "images.done" if files.folder is not None else None
        out, done = _interrupted_decoding(files.folder, name, shape) if record else (None, 0)
        if out is None:
            if record is not None:
                record.unlink(missing_ok=True)  # it counted images of an earlier file
            out = files.create("images", shape)

        def progress(count: int) -> None:
            out.sync()  # the images first, then the record that says they are there
            write_file(record, str(count))

        with out:
            decode_images(paths, size, crop, channels, f"decode {name}", out=out, done=done,
                          on_chunk=progress if record else None)
        if record is not None:
            record.unlink(missing_ok=True)

    return cached_arrays(data_dir, name, key, build, shapes={"images": shape})["images"]


def _interrupted_decoding(folder: Path, name: str, shape: tuple[int, ...]
                          ) -> tuple[Optional[NpyFile], int]:
    """The images file an interrupted decoding left in `folder` and how many images it holds, or
    (None, 0)."""
    target, record = folder / "images.npy", folder / "images.done"
    if not (target.exists() and record.exists()):
        return None, 0
    try:
        done = int(record.read_text())
        if not 0 <= done <= shape[0]:
            raise ValueError(f"{done} of {shape[0]} done")
        out = NpyFile.reopen(target, shape)
    except (ValueError, OSError) as err:
        log.warning("cannot continue the decoding in %s (%s); starting again", folder, err)
        return None, 0
    log.info("continuing the interrupted decoding of %s at image %d of %d", name, done, shape[0])
    return out, done
