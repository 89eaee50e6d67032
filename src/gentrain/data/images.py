"""Decoding image files once: centre-crop, resize, and cache the uint8 array so later runs start in seconds."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import multiprocessing
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from dataclasses import replace
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gentrain.progress import Progress
from gentrain.runtime import available_cores
from gentrain.data.stored import DiskImages, write_npy
from gentrain.errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when decoding changes, so old caches are not reused


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

    def build(folder: Path) -> None:
        for k, s in splits.items():
            write_npy(folder / f"{k}.npy", resize_images(s.images, size))

    resized = cached_arrays(data_dir, f"{name}-{size}px", key, build,
                            shapes={k: (len(s), s.images.shape[1], size, size) for k, s in splits.items()})
    return {k: replace(s, images=resized[k]) for k, s in splits.items()}


DECODE_CHUNK = 256  # images per task of a decoding worker, and between two progress records


def decode_images(paths: Sequence[Path], size: int, crop: Optional[int], channels: int, desc: str,
                  out: Optional[np.ndarray] = None, done: int = 0, on_chunk: Optional[Callable[[int], None]] = None
                  ) -> np.ndarray:
    """Decode, centre-crop (to `crop`, or the short side) and resize every file -> uint8 (N, C, size, size).

    Large sets are decoded in worker processes, chunk by chunk in order, into `out` (an array in memory, or a file
    mapped by the cache); `done` images are already there (an interrupted decoding continues), and `on_chunk`
    hears how many are done after each chunk. Unreadable files are collected and reported together, by name.
    """
    from gentrain.data.decode import decode_chunk

    out = np.empty((len(paths), channels, size, size), dtype=np.uint8) if out is None else out
    starts = list(range(done, len(paths), DECODE_CHUNK))
    workers = min(8, available_cores(), len(starts))
    failures: list[str] = []
    # Processes, not threads: PIL's resize holds the GIL. Forked, as DataLoader workers are: a spawned worker
    # would import the caller's main module again. Small sets are decoded here, where starting workers costs more.
    forking = "fork" in multiprocessing.get_all_start_methods()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) \
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


def cache_dir_for(data_dir: Path) -> Optional[Path]:
    """Beside the data when that folder is writable, else the user's cache directory.

    A folder without write permission bits counts as read-only even for root, who could write into it anyway:
    shared, read-only dataset folders stay untouched.
    """
    if os.access(data_dir, os.W_OK) and data_dir.stat().st_mode & 0o222:
        return data_dir / ".gentrain_cache"
    base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return base / "gentrain"


@contextlib.contextmanager
def one_builder(lock_path: Path) -> Iterator[None]:
    """Held while a cache is checked and built: other processes (torchrun's ranks, parallel sweep jobs) wait here
    and then read what the first one wrote, so one file never has two writers."""
    try:
        handle = open(lock_path, "a")
    except OSError:  # a cache folder we cannot write: nothing is written there either
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish writing %s", lock_path.with_suffix(""))
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_arrays(
    data_dir: Path, name: str, key: dict, build: Callable[[Path], None], shapes: dict[str, tuple],
) -> dict[str, DiskImages]:
    """The uint8 arrays (`<k>.npy` for each k of `shapes`) cached under `key`: `build(folder)` writes them into a
    working folder on the first call, which becomes the cache only once complete (a rename); an interrupted build
    leaves the working folder for the next call to continue. Returned as DiskImages: nothing is loaded yet.

    A damaged cache (unreadable, truncated, or arrays of other shapes than `shapes`, where None in a shape matches
    any length) is rebuilt with a warning."""
    key = {**key, "version": CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = cache_dir_for(data_dir)
    final, working = cache_dir / f"{name}-{digest}", cache_dir / f".{name}-{digest}.partial"
    try:
        working.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        working = Path(tempfile.mkdtemp(prefix=f"gentrain-{name}-"))
        log.warning("could not cache decoded %s in %s (%s); the next run decodes again", name, cache_dir, err)
    with one_builder(cache_dir / f".{name}-{digest}.lock"):
        if final.is_dir():
            try:
                arrays = {k: DiskImages(final / f"{k}.npy") for k in shapes}
                for k, shape in shapes.items():
                    found = tuple(arrays[k].shape)
                    if len(found) != len(shape) or any(s is not None and s != f for s, f in zip(shape, found)):
                        raise DataError(f"{k} has shape {found}, expected {shape}")
                log.info("loaded decoded %s from the cache %s", name, final)
                shutil.rmtree(working, ignore_errors=True)
                return arrays
            except DataError as err:
                log.warning("the cache %s is damaged (%s); decoding again", final, err)
                shutil.rmtree(final, ignore_errors=True)
        build(working)
        if working.parent == cache_dir:
            os.replace(working, final)
            log.info("cached decoded %s in %s", name, final)
            return {k: DiskImages(final / f"{k}.npy") for k in shapes}
    return {k: DiskImages(working / f"{k}.npy") for k in shapes}


def decoded_cached(data_dir: Path, name: str, key: dict, paths: Sequence[Path], size: int, crop: Optional[int],
                   channels: int) -> DiskImages:
    """Every file of `paths` decoded once into the cache (decode_images), continuing an interrupted decoding
    where it stopped: the images file is written in place and `images.done` records how many are in it."""
    shape = (len(paths), channels, size, size)

    def build(folder: Path) -> None:
        target, record = folder / "images.npy", folder / "images.done"
        done = 0
        if target.exists() and record.exists():
            try:
                done = int(record.read_text())
                out = np.lib.format.open_memmap(target, mode="r+")
                if out.shape != shape or out.dtype != np.uint8 or not 0 <= done <= len(paths):
                    raise ValueError(f"{out.shape} {out.dtype}, {done} done")
                log.info("continuing the interrupted decoding of %s at image %d of %d", name, done, len(paths))
            except (ValueError, OSError) as err:
                log.warning("cannot continue the decoding in %s (%s); starting again", folder, err)
                done = 0
        if done == 0:
            out = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=shape)

        def progress(count: int) -> None:
            out.flush()  # the images first, then the record that says they are there
            tmp = record.with_suffix(".tmp")
            tmp.write_text(str(count))
            os.replace(tmp, record)

        decode_images(paths, size, crop, channels, f"decode {name}", out=out, done=done, on_chunk=progress)
        out.flush()
        del out
        record.unlink(missing_ok=True)

    return cached_arrays(data_dir, name, key, build, shapes={"images": shape})["images"]
