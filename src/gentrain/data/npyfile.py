"""Writing uint8 `.npy` arrays with plain writes (pwrite), never through a memory map.

A full disk under a memory map is SIGBUS: the process dies without a word. Here a file's whole
size is reserved when it is created (posix_fallocate), so a full disk is an OSError (ENOSPC) naming
the file before any image is decoded: one line and exit status 2 (errors.py). No file is written
through a symbolic link, and a file without a name (`NpyFile.anonymous`) leaves nothing behind,
even after `kill -9`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np
import torch

from gentrain.data.stored import DiskImages


class NpyFile:
    """A uint8 (N, ...) array in a .npy file, written a slice of rows at a time: `file[a:b] = rows`."""

    def __init__(self, fd: int, shape: tuple[int, ...], name: str, *, durable: bool):
        self.fd, self.name, self.durable = fd, name, durable
        self.shape = tuple(int(s) for s in shape)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": self.shape})
        self.header = header.getvalue()
        self.row_bytes = int(np.prod(self.shape[1:]))
        self.nbytes = len(self.header) + self.shape[0] * self.row_bytes

    @classmethod
    def create(cls, path: Path, shape: tuple[int, ...]) -> "NpyFile":
        """A new file at `path`, replacing a file there (never writing through a link); it is
        flushed to disk when closed."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            return cls(fd, shape, str(path), durable=True)._reserved()
        except BaseException:
            path.unlink(missing_ok=True)  # no room for it: leave nothing
            raise

    @classmethod
    def anonymous(cls, folder: Path, shape: tuple[int, ...]) -> "NpyFile":
        """A file without a name in `folder` (O_TMPFILE, or a name removed at once)."""
        with _naming(str(folder)), tempfile.TemporaryFile(dir=folder, prefix=".gentrain-") as f:
            fd = os.dup(f.fileno())
        return cls(fd, shape, str(folder), durable=False)._reserved()

    @classmethod
    def reopen(cls, path: Path, shape: tuple[int, ...]) -> "NpyFile":
        """A file `create` made with this shape, to write more rows into (else ValueError)."""
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        file = cls(fd, shape, str(path), durable=True)
        if os.pread(fd, len(file.header), 0) != file.header or os.fstat(fd).st_size < file.nbytes:
            file.close()
            raise ValueError(f"{path} does not hold a uint8 array of shape {shape}")
        return file

    def _reserved(self) -> "NpyFile":
        try:
            self._write(self.header, 0)
            with _naming(self.name):
                _reserve(self.fd, self.nbytes)
        except BaseException:
            self.close()
            raise
        return self

    def __setitem__(self, rows: slice, values: Union[np.ndarray, torch.Tensor]) -> None:
        data = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
        self._write(memoryview(data), len(self.header) + (rows.start or 0) * self.row_bytes)

    def _write(self, data: Union[bytes, memoryview], offset: int) -> None:
        view = memoryview(data).cast("B")
        with _naming(self.name):
            while len(view):
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written

    def sync(self) -> None:
        """What was written is on disk (before a record says so, or a rename shows it)."""
        with _naming(self.name):
            os.fsync(self.fd)

    def read_back(self) -> DiskImages:
        """The array, read through a descriptor of its own: works when the file has no name."""
        return DiskImages.from_descriptor(os.dup(self.fd), self.name)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "NpyFile":
        return self

    def __exit__(self, kind: Any, *rest: Any) -> None:
        try:
            if kind is None and self.durable:
                self.sync()
        finally:
            self.close()


@contextlib.contextmanager
def _naming(name: str) -> Iterator[None]:
    """OSErrors of calls on a descriptor name the file, so that their one-line message says where."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, name) from None


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks now: a full disk fails here, not as SIGBUS or a lost write later."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except AttributeError:  # macOS
        pass
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    os.ftruncate(fd, size)  # a file system without allocation: a full disk shows at a write


def spill(images: Union[torch.Tensor, np.ndarray], folder: Path) -> DiskImages:
    """`images` written to a file without a name in `folder` and read back from disk: in_memory=false
    for data a loader built in memory (MNIST, CIFAR-10). A full disk is one line; nothing stays."""
    array = np.asarray(images)
    folder.mkdir(parents=True, exist_ok=True)
    with NpyFile.anonymous(folder, array.shape) as file:
        file[0 : len(array)] = array
        return file.read_back()
