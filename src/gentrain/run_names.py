"""Where runs go and what they are called: the launch time that names run and sweep directories, and job
directories named by what differs between the jobs of a sweep (`3_latent_dim=8,lr=0.001`).

Both are fixed once, in the process the user started, and reach every process that runs a job through the
environment: joblib's workers and submitit's jobs import gentrain anew and would otherwise take their own clock
(and land in another sweep directory). Under torchrun rank 0's clock is broadcast (distributed.py). The values
are config resolvers (configs/config.yaml: hydra.run.dir, hydra.sweep.dir and subdir).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

LAUNCH_TIME_ENV = "GENTRAIN_LAUNCH_TIME"
CONSTANT_KEYS_ENV = "GENTRAIN_CONSTANT_KEYS"
MAX_NAME = 96  # characters of a job directory's name before it is shortened with a digest

_launch_time = datetime.datetime.now()


def current_launch_time() -> datetime.datetime:
    value = os.environ.get(LAUNCH_TIME_ENV)
    if value:
        with contextlib.suppress(ValueError):
            return datetime.datetime.fromisoformat(value)
    return _launch_time


def set_launch_time(value: datetime.datetime) -> None:
    global _launch_time
    _launch_time = value


class LaunchTaken(BaseException):
    """The sweep directory this launch time names belongs to another command (started in the same second): the
    command starts again one second later (cli.py). A BaseException, so that Hydra's callback runner lets it out."""

    def __init__(self, folder: Path):
        super().__init__(f"{folder} belongs to another command")
        self.folder = folder


def named_by_launch_time(directories: Any) -> bool:
    """Whether hydra.run or hydra.sweep names its `dir` by the launch time (the default) rather than by a path the
    user chose (on the command line or in a config): only such a directory gives way to another command's."""
    from omegaconf import OmegaConf

    return "launch_time" in str(OmegaConf.to_container(directories, resolve=False).get("dir", ""))


def launch_time(pattern: str) -> str:
    """The `launch_time` resolver: when the command was started, formatted with `pattern`."""
    return current_launch_time().strftime(pattern)


def name_suffix(name: Any) -> str:
    """The `name_suffix` resolver: '_<name>' for runs given name=..., nothing otherwise."""
    return f"_{name}" if name else ""


def constant_keys(arguments: Sequence[str]) -> list[str]:
    """The keys of the command-line overrides that every job of a sweep shares (not `a=1,2`, `range(...)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    candidates = [a for a in arguments if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return []  # Hydra reports the bad override itself
    return [o.key_or_group for o in parsed if not o.is_sweep_override()]


# Keys that say how a job runs, not what it trains: they never name a job or make a sweep summary column.
NOT_A_SETTING = {"trainer.resume"}


def swept_overrides(job_overrides: Sequence[str]) -> list[str]:
    """The overrides of one job that are not shared by every job (a sweeper's too): what names it. Keys, not
    texts, are compared: Hydra rewrites a job's values (`false` becomes `False`). trainer.resume never names a job:
    a job requeued with trainer.resume=auto (gentrain/slurm.py) continues in its own directory."""
    constants = set(json.loads(os.environ.get(CONSTANT_KEYS_ENV, "[]"))) | NOT_A_SETTING
    return [str(o) for o in job_overrides if str(o).split("=", 1)[0].lstrip("+~") not in constants]


def short_names(overrides: Sequence[str]) -> list[str]:
    """`model.latent_dim=8` -> `latent_dim=8`, unless two overrides would then share a name."""
    keys = [o.split("=", 1)[0] for o in overrides]
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [f"{short if last.count(short) == 1 else key}={o.split('=', 1)[1]}"
            for o, key, short in zip(overrides, keys, last)]


def job_dirname(number: Any, job_overrides: Any) -> str:
    """The `job_dirname` resolver: `<job number>_<what differs>`, safe as a directory name."""
    swept = ",".join(short_names(swept_overrides(list(job_overrides or []))))
    name = re.sub(r"[^\w.=,+-]", "_", swept)
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f"{number}_{name}" if name else str(number)


@contextlib.contextmanager
def fixed_for_this_command(arguments: Sequence[str]) -> Iterator[None]:
    """Put the launch time and the keys every job of a sweep shares into the environment of every process the command
    starts, and take them out again afterwards (a later command in the same process gets its own)."""
    with environment({LAUNCH_TIME_ENV: _launch_time.isoformat(),
                      CONSTANT_KEYS_ENV: json.dumps(constant_keys(arguments))}):
        yield


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by the processes started meanwhile), and restore them afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
