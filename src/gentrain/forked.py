"""Forked children (decoding workers) that neither keep their parent's locks nor outlive it.

An flock lock belongs to the open file description, which fork() shares with the child: a child
that outlived its parent (a decoding worker after `kill -9` of its run) would hold the run's lock
and the cache's build lock for good. Both locks register their descriptors here, and every forked
child loses them at once; worker processes also ask the kernel to kill them when their parent dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

_LOCKS: set[int] = set()  # descriptors of the locks this process holds

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def keep_from_children(fd: int) -> None:
    """No child forked from now on holds `fd` (a lock), until `release_to_children(fd)`."""
    _LOCKS.add(fd)


def release_to_children(fd: int) -> None:
    """Before `fd` is closed: its number may be reused for a file that children should inherit."""
    _LOCKS.discard(fd)


def _drop_locks_in_child() -> None:
    if not _LOCKS:
        return
    null = os.open(os.devnull, os.O_RDWR)
    for fd in list(_LOCKS):
        # /dev/null in its place, not a closed number: objects copied from the parent that close
        # the descriptor later close /dev/null, never a file the child has opened since
        try:
            os.dup2(null, fd, inheritable=False)
        except OSError:
            pass
    os.close(null)
    _LOCKS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


def die_with_parent(parent_pid: int) -> None:
    """Initializer of a worker process: the worker ends when `parent_pid` does, even by `kill -9`.

    A worker holds nothing that needs cleaning up, so SIGKILL it is. Linux sends it when the thread
    that forked the worker ends: one thread creates and shuts down the pool (decode_images does)."""
    if not _kernel_kills_orphans():  # no prctl (macOS, BSD): a thread watches for the parent
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before prctl: its signal will never come
        os._exit(1)


def _kernel_kills_orphans() -> bool:
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    args = (PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return prctl(*(ctypes.c_ulong(a) for a in args)) == 0


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)
