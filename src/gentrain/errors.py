"""Errors a user can fix, and how gentrain's commands exit.

Exit statuses, the same for `gentrain`, `gentrain-sample` and `gentrain-eval`:
  0  success
  1  a bug in gentrain (the traceback is printed)
  2  a user error: a bad config value, missing or corrupt data, a run directory or checkpoint that does not fit,
     a run directory in use by another process, a full disk or a read-only folder (one line on stderr)
  128 + signal  stopped by a signal: 130 for Ctrl-C (SIGINT), 143 for SIGTERM
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
from typing import Any, Iterator, Optional

EXIT_USER_ERROR = 2

# OSErrors that describe the machine, not gentrain: reported in one line, like any other user error.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class GentrainError(Exception):
    """Base class: a problem with the user's input, not a bug in gentrain."""


class ConfigError(GentrainError):
    """A config that composes but cannot work (batch size 0, an image size a model cannot take...)."""


class DataError(GentrainError):
    """Missing, truncated or corrupt dataset files, or a failed download."""


class CheckpointError(GentrainError):
    """A checkpoint that cannot be read or does not belong to this run's model."""


class RunDirectoryError(GentrainError):
    """A run directory that is not a gentrain run, holds something other than data, or is in use."""


class NonFiniteError(GentrainError):
    """Training produced NaN or infinite losses or gradients and the policy says to stop."""


class Stopped(BaseException):
    """The process was asked to stop by a signal; exits with 128 + the signal's number. Like KeyboardInterrupt,
    it is not an Exception: handlers of errors let it through."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


class Preempted(Stopped):
    """Stopped during training, after saving a checkpoint to continue from."""


class Interrupted(Stopped):
    """Stopped outside the training loop (loading, final evaluation, sampling): nothing half-written is kept."""


def storage_error(err: BaseException) -> Optional[OSError]:
    """The OSError about the machine's storage behind `err` (torch wraps them in RuntimeErrors), if any."""
    seen: set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def one_line(err: BaseException) -> str:
    """The message of a user error as one line: a storage error names the file and the reason; Hydra's and
    OmegaConf's multi-line messages are joined ("Available options in 'model': dcgan, vae")."""
    found = storage_error(err) if not isinstance(err, GentrainError) else None
    if found is not None:
        return f"{found.filename}: {found.strerror}" if found.filename else str(found.strerror or found)
    lines = [line.strip() for line in str(err).splitlines()]
    cause = err.__cause__
    if cause is not None and type(cause).__module__.startswith("omegaconf"):
        lines += [line.strip() for line in str(cause).splitlines()]
    # OmegaConf's type details (reference_type=List[Split], object_type=EvalOptions) say nothing to a user
    lines = [line for line in lines if not re.match(r"(object|reference)_type=", line)]
    parts: list[str] = []
    listing = False  # the lines after one ending in ':' are the items of a list
    for line in filter(None, lines):
        if listing and parts and not line.endswith(":"):
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
            continue
        parts.append(line.rstrip("."))
        listing = line.endswith(":")
    # Hydra lists its config search path after a missing option: where gentrain's configs live is no help here.
    parts = [p for p in parts if not p.startswith("Config search path")]
    return "; ".join(parts) or type(err).__name__


# Whether the user asked for tracebacks of user errors. gentrain sets HYDRA_FULL_ERROR=1 for Hydra's sake (so that
# Hydra's errors reach exit_statuses) and keeps the user's own choice here, where sweep jobs in other processes
# find it too.
USER_FULL_ERROR = "GENTRAIN_USER_HYDRA_FULL_ERROR"


def full_errors() -> bool:
    return os.environ.get(USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "")) == "1"


def is_user_error(err: BaseException) -> bool:
    """A user error (exit 2) rather than a bug (exit 1): gentrain's own, Hydra's and OmegaConf's config errors,
    and the machine's storage refusing a write."""
    if isinstance(err, GentrainError) or storage_error(err) is not None:
        return True
    return type(err).__module__.split(".")[0] in ("hydra", "omegaconf")


@contextlib.contextmanager
def deferred_stop() -> Iterator[list[int]]:
    """Inside, SIGTERM and SIGINT are noted (in the yielded list) instead of stopping the process, so that a loop
    can finish its step and save before it exits; a second signal exits at once, without saving."""
    received: list[int] = []

    def note(signum: int, frame: Any) -> None:
        if received:
            print(f"\n{signal.Signals(signum).name} again: exiting now, without a checkpoint", flush=True)
            os._exit(128 + signum)
        received.append(signum)
        logging.getLogger("gentrain").warning(
            "%s received: stopping after the current step (send it again to exit at once)", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def exit_statuses(command: str) -> Iterator[None]:
    """The exit contract above, for a command's whole life: one line on stderr for user errors and for signals
    (SIGINT and SIGTERM stop the command wherever it is, as an Interrupted exception), tracebacks for bugs."""

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except Stopped as err:
        print(f"{command}: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        print(f"{command}: stopped by SIGINT", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    except Exception as err:
        if full_errors() or not is_user_error(err):
            raise
        print(f"{command}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
