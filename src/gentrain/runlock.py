"""One process at a time in a run directory: an exclusive lock on `<run>/.gentrain.lock` (flock, holding the pid and
host), released on exit and by the kernel when a process dies; a second process on the same directory stops with
one line naming the first. File systems without flock fall back to an exclusively created file, which a later
process on the same host removes once its pid no longer runs.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
from pathlib import Path
from typing import Optional

from gentrain.errors import RunDirectoryError

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

    def acquire(self) -> None:
        import fcntl

        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now().isoformat(timespec="seconds")}
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        self._fd = fd

    def _acquire_without_flock(self, me: dict) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                with open(self.path, "rb") as f:
                    holder = self._parse(f.read())
                dead = holder.get("host") == me["host"] and not process_alive(int(holder.get("pid", -1)))
                if not dead:
                    raise self._in_use(holder, stale_hint=True) from None
                log.warning("removing the stale lock of pid %s, which no longer runs", holder.get("pid"))
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, json.dumps(me).encode())
            self._fd = fd
            return
        raise self._in_use({}, stale_hint=True)

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
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before closing: a waiting process re-checks the inode it locked
        os.close(self._fd)
        self._fd = None
