"""Images that stay on disk: uint8 (N, C, H, W) arrays in `.npy` files, read a batch at a time.

`dataset.in_memory` chooses, for every dataset, between two paths. In memory, each split is a tensor (on the
GPU when there is one). On disk (`DiskImages`), a batch's rows of a file are read with pread when it needs
them. Those reads go through the page cache without mapping the file, so a streaming process's resident memory
does not grow with the dataset; the operating system keeps what fits cached.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from gentrain.errors import DataError

log = logging.getLogger(__name__)

AUTO_SHARE = 0.5  # in_memory=auto loads the data when it needs at most this share of the available memory


class DiskImages:
    """Rows of a uint8 `.npy` array, read on demand: indexing returns a tensor, subset() another view."""

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, path: Union[str, Path], rows: Optional[Tensor] = None, *,
                 file: Optional["_OpenFile"] = None):
        self.path = Path(path)
        self.file = _OpenFile(self.path) if file is None else file  # shared by every view of the array
        # the header is read through the descriptor, not the name: the name may be gone
        with os.fdopen(os.dup(self.file.fd), "rb") as f:
            f.seek(0)
            try:
                version = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, fortran_order, dtype = header(f)
            except ValueError as err:
                raise DataError(f"{self.path} is not a readable .npy file ({err})") from None
            self.offset = f.tell()
        if dtype != np.uint8 or fortran_order or len(shape) != 4:
            raise DataError(f"{self.path} holds {dtype} {shape}, expected C-ordered uint8 (N, C, H, W) "
                            f"images")
        if os.fstat(self.file.fd).st_size < self.offset + int(np.prod(shape)):
            raise DataError(f"{self.path} is shorter than its header says (truncated?)")
        self.file_shape = tuple(int(s) for s in shape)
        self.row_bytes = int(np.prod(self.file_shape[1:]))
        self.rows = rows  # int64 row numbers in the file, or None for every row in order

    @classmethod
    def from_descriptor(cls, fd: int, name: Union[str, Path]) -> "DiskImages":
        """The array in the open file `fd` (closed with the last view), named or not."""
        return cls(name, file=_OpenFile(Path(name), fd))

    def __len__(self) -> int:
        return self.file_shape[0] if self.rows is None else len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.file_shape[1:]))

    def to(self, device: torch.device) -> "DiskImages":
        return self  # stays on disk: batches move to the device as they are read

    def subset(self, index: Tensor) -> "DiskImages":
        """A view of some rows (hold-out splits, partitions) that copies no image."""
        index = index.cpu().long()
        return DiskImages(self.path, index if self.rows is None else self.rows[index], file=self.file)

    def __getitem__(self, key: Union[int, slice, Tensor, np.ndarray]) -> Tensor:
        if isinstance(key, int):
            return self[key : key + 1][0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            key = torch.arange(start, stop, step)
        return self.read(torch.as_tensor(key).cpu().long())

    def read(self, index: Tensor, pin: bool = False) -> Tensor:
        """The rows `index` as a uint8 tensor; with `pin`, in pinned memory (for non-blocking copies to a
        GPU)."""
        rows = index if self.rows is None else self.rows[index]
        out = torch.empty((len(rows), *self.file_shape[1:]), dtype=torch.uint8, pin_memory=pin)
        if len(rows) == 0:
            return out
        target = out.numpy().reshape(len(rows), self.row_bytes)
        rows = rows.numpy()
        # Runs of consecutive rows (evaluation reads whole slices) are one read each.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for first, last in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]])):
            self._read_into(target[first:last], int(rows[first]))
        return out

    def _read_into(self, target: np.ndarray, row: int) -> None:
        view, offset = memoryview(target).cast("B"), self.offset + row * self.row_bytes
        while len(view):
            count = os.preadv(self.file.fd, [view], offset)
            if count <= 0:
                raise DataError(f"{self.path} ended early at byte {offset} (truncated while in use?)")
            view, offset = view[count:], offset + count

    def load(self) -> Tensor:
        """Every row in memory: what in_memory=true makes of a stored split."""
        return self.read(torch.arange(len(self)))


class _OpenFile:
    """A read-only descriptor, closed when the last view of its array goes."""

    def __init__(self, path: Path, fd: Optional[int] = None):
        try:
            self.fd = os.open(path, os.O_RDONLY) if fd is None else fd
        except OSError as err:
            raise DataError(f"cannot open the stored images {path}: {err.strerror}") from None

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass


def take(images: Union[Tensor, DiskImages], index: Tensor) -> Union[Tensor, DiskImages]:
    """Rows of an image array: a copy of a tensor, a view of a stored array."""
    return images.subset(index) if isinstance(images, DiskImages) else images[index]


def pixels(images: Union[Tensor, DiskImages]) -> Tensor:
    """The images as a tensor in memory (read from disk when stored)."""
    return images.load() if isinstance(images, DiskImages) else images


def available_memory() -> Optional[int]:
    """Bytes free for the data: the host's MemAvailable, or the GPU's free memory when there is a GPU (where
    the data would go) and it is smaller; None when neither is known."""
    host = None
    try:
        with open("/proc/meminfo") as f:
            host = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except OSError:
        pass
    if torch.cuda.is_available():
        device = torch.cuda.mem_get_info()[0]
        host = device if host is None else min(host, device)
    return host


def keeps_in_memory(mode: str, nbytes: int) -> bool:
    """dataset.in_memory: true, false, or auto = in memory when the images take at most AUTO_SHARE of what is
    free (the log says which, and why)."""
    if mode != "auto":
        return mode == "true"
    free = available_memory()
    fits = free is None or nbytes <= AUTO_SHARE * free
    if free is not None:
        log.info("dataset.in_memory=auto: %.2f GB of images, %.2f GB available: %s", nbytes / 1e9, free / 1e9,
                 "in memory" if fits else f"streamed from disk (over {AUTO_SHARE:.0%} of it)")
    return fits
