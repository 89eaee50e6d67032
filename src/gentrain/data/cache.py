"""The cache of decoded and resized images: where it lives, one builder at a time, whole arrays only.

A build writes into a working folder (`.<name>-<digest>.partial`) that becomes the cache by a rename
once complete; an interrupted build leaves it for the next one to continue. Where no cache folder
can be written, the arrays go to files without a name, which go with the process (even `kill -9`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

from gentrain.data.npyfile import NpyFile
from gentrain.data.stored import DiskImages
from gentrain.errors import DataError
from gentrain.forked import keep_from_children, release_to_children

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when decoding changes, so old caches are not reused


def cache_dir_for(data_dir: Path) -> Optional[Path]:
    """Beside the data when that folder is writable, else the user's cache directory.

    A folder without write permission bits counts as read-only even for root, who could write into
    it anyway: shared, read-only dataset folders stay untouched.
    """
    if os.access(data_dir, os.W_OK) and data_dir.stat().st_mode & 0o222:
        return data_dir / ".gentrain_cache"
    base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return base / "gentrain"


@contextlib.contextmanager
def one_builder(lock_path: Path) -> Iterator[None]:
    """Held while a cache is checked and built: other processes (torchrun's ranks, parallel sweep
    jobs) wait here and then read what the first one wrote, so one file never has two writers. No
    decoding worker holds it (forked.py): one that outlived its run would make every later run wait."""
    try:
        handle = open(lock_path, "a")
    except OSError:  # a cache folder we cannot write: nothing is written there either
        yield
        return
    with handle:
        keep_from_children(handle.fileno())
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process to finish writing %s", lock_path.with_suffix(""))
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            release_to_children(handle.fileno())


class ArrayFiles:
    """Where a build writes its arrays: `<name>.npy` in the cache's working folder, or, where no
    cache folder can be written (`folder` None), files without a name in $TMPDIR."""

    def __init__(self, folder: Optional[Path]):
        self.folder = folder
        self.unnamed: dict[str, DiskImages] = {}

    def create(self, name: str, shape: tuple[int, ...]) -> NpyFile:
        if self.folder is not None:
            return NpyFile.create(self.folder / f"{name}.npy", shape)
        file = NpyFile.anonymous(Path(tempfile.gettempdir()), shape)
        self.unnamed[name] = file.read_back()  # its size is reserved: it reads what is written
        return file


def cached_arrays(data_dir: Path, name: str, key: dict, build: Callable[[ArrayFiles], None],
                  shapes: dict[str, tuple]) -> dict[str, DiskImages]:
    """The uint8 arrays (one for each key of `shapes`) cached under `key`, which `build(files)`
    writes on the first call (see the module docstring). As DiskImages: nothing is loaded yet.

    A damaged cache (unreadable, truncated, or arrays of other shapes than `shapes`, where None in a
    shape matches any length) is rebuilt with a warning."""
    key = {**key, "version": CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = cache_dir_for(data_dir)
    final, working = cache_dir / f"{name}-{digest}", cache_dir / f".{name}-{digest}.partial"
    try:
        working.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        log.warning("could not cache decoded %s in %s (%s); the next run decodes again",
                    name, cache_dir, err)
        files = ArrayFiles(None)
        build(files)
        return files.unnamed
    with one_builder(cache_dir / f".{name}-{digest}.lock"):
        if final.is_dir():
            try:
                arrays = {k: DiskImages(final / f"{k}.npy") for k in shapes}
                for k, shape in shapes.items():
                    found = tuple(arrays[k].shape)
                    if len(found) != len(shape) or any(
                            s is not None and s != f for s, f in zip(shape, found)):
                        raise DataError(f"{k} has shape {found}, expected {shape}")
                log.info("loaded decoded %s from the cache %s", name, final)
                shutil.rmtree(working, ignore_errors=True)
                return arrays
            except DataError as err:
                log.warning("the cache %s is damaged (%s); decoding again", final, err)
                shutil.rmtree(final, ignore_errors=True)
        try:
            build(ArrayFiles(working))
        except BaseException:
            with contextlib.suppress(OSError):
                working.rmdir()  # only when empty: a decoding under way stays, to be continued
            raise
        os.replace(working, final)
        log.info("cached decoded %s in %s", name, final)
        return {k: DiskImages(final / f"{k}.npy") for k in shapes}
