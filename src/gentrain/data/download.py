"""Downloads with a progress bar and checksum verification; nothing half-written is ever left in place."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence


from gentrain.progress import Progress
from gentrain.errors import DataError
from gentrain.files import remove_stale_temporaries, write_file
from gentrain.runlock import process_alive

log = logging.getLogger(__name__)

NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # errors of a full disk: never the network's


def file_digest(path: Path, algorithm: str = "md5", chunk_size: int = 1 << 20) -> str:
    """The hex digest of a file (md5, or another of hashlib's algorithms: sha256)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Mismatch(Exception):
    """A download whose checksum is not the published one."""


def _fetch(response, out, name: str, expected: str | None, algorithm: str) -> None:
    """Copy a response into `out`, checking its digest on the way: a mismatch raises before the file is
    renamed."""
    digest = hashlib.new(algorithm)
    total = int(response.headers.get("Content-Length") or 0) or None
    with Progress(total, f"download {name}", "B") as progress:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
            digest.update(chunk)
            progress.update(len(chunk))
    if expected is not None and digest.hexdigest() != expected:
        raise Mismatch(f"{algorithm} {digest.hexdigest()} does not match the published {expected} "
                       f"(corrupted download)")


def download(urls: Sequence[str], destination: Path, expected: str | None, algorithm: str = "md5") -> Path:
    """Fetch the first of `urls` that works into `destination`, verifying its digest (`algorithm`: md5,
    sha256).

    The file is written to a temporary name in the same folder and renamed only once complete and
    verified, so an interrupted or corrupted download never looks like a good file.
    """
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=destination.parent).close()
    except OSError as err:
        raise DataError(
            f"cannot download {destination.name} into {destination.parent} ({err.strerror or err}): point "
            f"dataset.root (or $GENTRAIN_DATA) at a writable folder, or put the files there yourself"
        ) from None
    failures = []
    remove_stale_temporaries([destination.parent], process_alive)  # those of a download killed with kill -9
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                write_file(destination,
                           lambda out: _fetch(response, out, destination.name, expected, algorithm))
            log.info("downloaded %s from %s", destination, url)
            return destination
        except Mismatch as err:
            failures.append(f"{url}: {err}")
        except (urllib.error.URLError, OSError, ValueError) as err:
            if isinstance(err, OSError) and err.errno in NO_ROOM:  # no other mirror helps
                raise OSError(err.errno, err.strerror, str(destination.parent)) from None
            failures.append(f"{url}: {getattr(err, 'reason', err)}")
    raise DataError(f"could not download {destination.name} ({'; '.join(failures)})")


def missing_files_error(dataset: str, folder: Path, files: Sequence[str], hint: str = "") -> DataError:
    """The message for data that is absent and cannot be (or may not be) downloaded."""
    listed = ", ".join(files)
    extra = f" {hint}" if hint else ""
    return DataError(
        f"{dataset} files not found: expected {listed} in {folder}. Put them there, or point dataset.root "
        f"(or $GENTRAIN_DATA) at the folder that holds them, or download them with dataset.download=true "
        f"on a machine with internet access{extra}"
    )


def extract_tar(archive: Path, destination: Path) -> None:
    """Unpack a tar archive, refusing members that would land outside `destination`: into a
    temporary folder there first, then moved into place, so that a full disk or Ctrl-C leaves no
    half-unpacked files."""
    import tarfile

    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=destination))
    try:
        with tarfile.open(archive) as tar:
            try:
                tar.extractall(staging, filter="data")
            except TypeError:  # Python < 3.10.12 has no extraction filters
                root = staging.resolve()
                for member in tar.getmembers():
                    if not (staging / member.name).resolve().is_relative_to(root):
                        raise DataError(f"refusing to extract {member.name} from {archive}: "
                                        f"it points outside {destination}")
                tar.extractall(staging)
        for entry in staging.iterdir():
            _move_into(entry, destination / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(source: Path, target: Path) -> None:
    """`source` renamed to `target`, merged into a folder already there (a user's partial copy)."""
    if source.is_dir() and not source.is_symlink() and target.is_dir() and not target.is_symlink():
        for entry in source.iterdir():
            _move_into(entry, target / entry.name)
    else:
        os.replace(source, target)
