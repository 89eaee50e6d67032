"""How gentrain writes a file, wherever it writes one (a run directory, a folder the user chose, a cache):

- complete or absent: the bytes go to a temporary file beside the target (`.<name>.<pid>.tmp`, created
  exclusively), which is renamed over the target only once written; an error, a full disk or Ctrl-C removes
  it, and one that a kill -9 left behind is removed by the next command that works in that folder;
- never through a link: every folder between `root` (the run directory, or the folder the user chose) and the
  file is checked to be a real folder, not a symbolic link (folders are created as needed), and the rename
  replaces a link at the target instead of writing into what it points to;
- never over a file gentrain did not mean to replace: with `replace=False` the temporary is published with a
  hard link, which fails when the name exists, so checking and writing are one atomic step.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import IO, Callable, Iterable, Optional, Union

from gentrain.errors import GentrainError, RunDirectoryError

TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")  # .<name>.<pid>.tmp
Content = Union[bytes, str, Callable[[IO[bytes]], None]]


class FileExists(GentrainError):
    """A file gentrain would write is already there and may not be replaced."""


def real_folder(folder: Path, root: Optional[Path] = None) -> Path:
    """Create `folder` (and its parents) and check that no folder below `root` down to `folder` is a symbolic
    link or something other than a folder. `root` itself may be a link (the user chose it), and so may
    anything when there is no `root`."""
    folder = Path(os.path.abspath(folder))
    if root is None:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    root = Path(os.path.abspath(root))
    if root != folder and root not in folder.parents:
        raise ValueError(f"{folder} is not inside {root}")
    root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in folder.relative_to(root).parts:
        current = current / part
        try:
            os.mkdir(current)
            continue
        except FileExistsError:
            pass
        mode = os.lstat(current).st_mode
        if stat.S_ISLNK(mode):
            raise RunDirectoryError(f"{current} is a symbolic link: gentrain does not write through links "
                                    f"(replace it with a folder, or choose another place)")
        if not stat.S_ISDIR(mode):
            raise RunDirectoryError(f"{current} is not a folder (a file of that name is in the way)")
    return folder


def refuse_link(path: Path) -> None:
    """One line when `path` is a symbolic link (or a folder where a file belongs): gentrain writes files."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise RunDirectoryError(f"{path} is a symbolic link: gentrain does not write through links "
                                f"(remove it)")
    if stat.S_ISDIR(mode):
        raise RunDirectoryError(f"{path} is a folder, where gentrain writes a file (remove or rename it)")


def write_file(path: Path, content: Content, *, root: Optional[Path] = None, replace: bool = True,
               sync: bool = False) -> Path:
    """Write `content` (bytes, text, or a function that writes into a binary file) to `path` as described in
    the module docstring. `replace=False` raises FileExists when the name is taken; `sync` flushes the data to
    disk before the rename (checkpoints)."""
    folder = real_folder(path.parent, root)
    path = folder / path.name
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        if replace:
            if os.path.isdir(path) and not os.path.islink(path):
                raise RunDirectoryError(f"{path} is a folder, where gentrain writes a file (remove or rename "
                                        f"it)")
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError:
                raise FileExists(f"{path} already exists") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    if sync:
        sync_folder(folder)
    return path


def sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (where the file system allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def open_append(path: Path, *, root: Optional[Path] = None) -> IO[str]:
    """A text file opened for appending (a log), created when missing; never through a link."""
    folder = real_folder(path.parent, root)
    try:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(folder / path.name, flags, 0o644)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR):
            refuse_link(folder / path.name)  # says which, in one line
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


def existing(paths: Iterable[Path]) -> list[Path]:
    """Those of `paths` that are there already (links included, even broken ones)."""
    return [p for p in paths if os.path.lexists(p)]


def remove_stale_temporaries(folders: Iterable[Path], alive: Callable[[int], bool]) -> list[Path]:
    """Delete the temporaries (.<name>.<pid>.tmp) that processes which no longer run left in `folders`."""
    removed = []
    for folder in folders:
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in folder.iterdir():
            match = TEMPORARY.match(path.name)
            if match and int(match.group(1)) != os.getpid() and not alive(int(match.group(1))):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
