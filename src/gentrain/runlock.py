"""One process at a time in a run directory: an exclusive lock on `<run>/.gentrain.lock` (flock, holding the pid and
host), released on exit and by the kernel when a process dies; a second process on the same directory stops with
one line naming the first. File systems without flock fall back to an exclusively created file, which a later
process on the same host removes once its pid no longer runs.

No forked child ever holds the lock (forked.py): one that outlived its parent would keep it for
good. Anything else at the lock's path (a directory, a symbolic link, a FIFO, a file we may not
open) is refused in one line that names it; gentrain never writes through a link in a run directory.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Optional

from gentrain.errors import RunDirectoryError
from gentrain.forked import keep_from_children, release_to_children

log = logging.getLogger(__name__)

LOCK_FILE = ".gentrain.lock"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive use of a run directory by one process (see the module docstring)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._fd: Optional[int] = None
        self._owner = os.getpid()

    def acquire(self) -> None:
        import fcntl

        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now().isoformat(timespec="seconds")}
        while True:
            fd = self._open(os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise self._in_use(holder, stale_hint=False) from None
            except OSError as err:  # a file system without flock (some network mounts): pid + host decide
                os.close(fd)
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                self._acquire_without_flock(me)
                return
            try:  # the previous holder may have removed the file between our open() and flock()
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        keep_from_children(fd)
        self._fd, self._owner = fd, os.getpid()
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())

    def _acquire_without_flock(self, me: dict) -> None:
        for _ in range(2):
            try:
                fd = self._open(os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                reader = self._open(os.O_RDONLY)
                try:
                    holder = self._holder(reader)
                finally:
                    os.close(reader)
                dead = holder.get("host") == me["host"] and not process_alive(int(holder.get("pid", -1)))
                if not dead:
                    raise self._in_use(holder, stale_hint=True) from None
                log.warning("removing the stale lock of pid %s, which no longer runs", holder.get("pid"))
                self.path.unlink(missing_ok=True)
                continue
            self._fd, self._owner = fd, os.getpid()
            os.write(fd, json.dumps(me).encode())
            return
        raise self._in_use({}, stale_hint=True)

    def _open(self, flags: int) -> int:
        """The lock file, opened without following a link or blocking on a FIFO; anything but a
        regular file there is refused in one line."""
        try:
            fd = os.open(self.path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOENT) or not os.path.lexists(self.path):
                raise  # nothing odd there: a race with another process, or the storage's own error
            if err.errno in (errno.EACCES, errno.EPERM):
                raise RunDirectoryError(
                    f"{self.path}: {err.strerror} (the run's lock file): give yourself read and "
                    f"write permission (chmod u+rw) or delete it, then start again") from None
            mode = os.lstat(self.path).st_mode
            if stat.S_ISREG(mode):
                raise  # the storage refuses a lock file (read-only): its own one-line error
            raise self._not_a_lock_file(mode) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise self._not_a_lock_file(mode)
        return fd

    def _not_a_lock_file(self, mode: int) -> RunDirectoryError:
        if stat.S_ISLNK(mode):
            return RunDirectoryError(f"{self.path} is a symbolic link: gentrain does not write "
                                     f"through links in a run directory (delete it, then start again)")
        kind = ("a directory" if stat.S_ISDIR(mode) else
                "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a device file")
        return RunDirectoryError(f"{self.path} is {kind}, where gentrain keeps the run's lock file: "
                                 f"delete it, then start again")

    @staticmethod
    def _parse(raw: bytes) -> dict:
        try:
            holder = json.loads(raw.decode() or "{}")
            return holder if isinstance(holder, dict) else {}
        except ValueError:
            return {}

    def _holder(self, fd: int) -> dict:
        return self._parse(os.pread(fd, 4096, 0))

    def _in_use(self, holder: dict, *, stale_hint: bool) -> RunDirectoryError:
        who = (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}" if holder
               else "another process")
        hint = f"; if that process no longer runs, delete {self.path}" if stale_hint else ""
        return RunDirectoryError(
            f"run directory {self.run_dir} is in use by another gentrain process ({who}): wait for it to finish "
            f"or choose another hydra.run.dir{hint}"
        )

    def release(self) -> None:
        if self._fd is None or self._owner != os.getpid():  # a forked child: the parent's lock
            return
        self.path.unlink(missing_ok=True)  # before closing: a waiting process re-checks the inode it locked
        release_to_children(self._fd)
        os.close(self._fd)
        self._fd = None
