"""An Optuna study in its database, as gentrain's sweeper (optuna_sweeper.py) keeps it for sweeps
that continue it or share it at once:

- which trials count towards n_trials: finished, running (in any sweep), or failed in their job; a
  trial a sweep could not finish is failed without that mark (`give_back`), and one whose sweep died
  without a word (kill -9, a lost machine) is failed once its heartbeat is STALE_AFTER_S old;
- opening it: sweeps creating it at once retry the race they lost; a file that is not a study's
  database, a search space other than the stored one or another direction stop the sweep in one line
  (`storage_errors`, `check_search_space`) before it asks for a trial.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from gentrain.errors import ConfigError, RunDirectoryError

log = logging.getLogger(__name__)

# A failed trial counts towards n_trials only with this mark: its job ran and failed (a NaN loss).
JOB_FAILED = "gentrain_job_failed"
HEARTBEAT_S, STALE_AFTER_S = 20, 120
CREATION_ATTEMPTS = 5
DATABASE_ERRORS = (SQLAlchemyError, sqlite3.Error, optuna.exceptions.StorageInternalError)


def where(url: Optional[str]) -> str:
    """The study's database as a user names it: a SQLite file's path, a URL without its password."""
    try:
        parsed = make_url(str(url))
    except SQLAlchemyError:
        return str(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or str(url)
    return parsed.render_as_string(hide_password=True)


def unusable(url: Optional[str], reason: str) -> RunDirectoryError:
    return RunDirectoryError(f"{where(url)}: not a usable Optuna study database: {reason} "
                             "(hydra.sweeper.storage)")


def _database_error(err: Optional[BaseException]) -> Optional[BaseException]:
    """The driver's or SQLAlchemy's error behind `err` (optuna wraps them: StorageInternalError)."""
    while err is not None and not isinstance(err, (SQLAlchemyError, sqlite3.Error)):
        err = err.__cause__
    return err


@contextlib.contextmanager
def storage_errors(url: Optional[str]) -> Iterator[None]:
    """A database that cannot be read or written ends the sweep in one line naming it."""
    try:
        yield
    except DATABASE_ERRORS as err:
        cause = _database_error(err) or err
        reason = str(cause.orig if isinstance(cause, DBAPIError) else cause).splitlines()[0]
        raise unusable(url, reason) from err


def sqlite_file(url: str) -> Optional[Path]:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def refuse_foreign_sqlite(file: Path, url: str) -> None:
    """optuna would add its tables to any SQLite file: one with other tables is someone else's."""
    if not file.is_file() or file.stat().st_size == 0:
        return
    with contextlib.closing(sqlite3.connect(f"{file.absolute().as_uri()}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        tables = sorted(name for (name,) in rows)
    if tables and "studies" not in tables:
        raise unusable(url, f"a SQLite database of something else (tables {', '.join(tables[:5])})")


def _lost_creation_race(err: BaseException) -> bool:
    """Another sweep created the tables or the study meanwhile (a key taken, a table exists), or holds the
    write lock: SQLite fails a read transaction's upgrade to a write at once ("database is locked"),
    whatever its timeout, since waiting could deadlock. Seen once with four sweeps starting on a loaded
    machine."""
    cause = _database_error(err)
    return isinstance(cause, IntegrityError) or any(
        text in str(cause) for text in ("already exists", "database is locked"))


def open_study(url: Optional[str], study_name: Optional[str], sampler: BaseSampler,
               directions: list[str]) -> optuna.Study:
    """The stored study, created if new, with its running trials' heartbeats watched."""
    if url is None:  # in memory: this sweep's own
        return optuna.create_study(study_name=study_name, sampler=sampler, directions=directions)
    file = sqlite_file(url)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
        refuse_foreign_sqlite(file, url)
    engine_kwargs = {"connect_args": {"timeout": 60}} if file is not None else {}  # wait for others
    for attempt in itertools.count(1):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                 heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=STALE_AFTER_S)
            return optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                       directions=directions, load_if_exists=True)
        except DATABASE_ERRORS as err:
            if attempt == CREATION_ATTEMPTS or not _lost_creation_race(err):
                raise
            time.sleep(random.uniform(0.01, 0.2))
        except ValueError as err:  # "Cannot overwrite study direction from ... to ..."
            raise ConfigError(f"hydra.sweeper.direction: {err} (the study {study_name} in "
                              f"{where(url)})") from err
        except RuntimeError as err:  # the tables of another optuna version
            raise unusable(url, str(err).splitlines()[0]) from err


def current_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials as the database holds them now: optuna caches them, and reads other
    sweeps' trials again only in ask() (with this call)."""
    study._storage.read_trials_from_remote_storage(study._study_id)
    return study.get_trials(deepcopy=False)


def check_search_space(study: optuna.Study, space: dict[str, BaseDistribution], url: Optional[str],
                       custom_params: bool) -> None:
    """A continued study keeps its parameters and their distributions: another space would fail
    mid-trial, or mix two searches. A custom_search_space's own parameters are not declared."""
    stored: dict[str, BaseDistribution] = {}
    for trial in current_trials(study):
        stored.update(trial.distributions)
    if not stored:
        return
    for name in sorted(space.keys() if custom_params else space.keys() | stored.keys()):
        if space.get(name) == stored.get(name):
            continue
        here, there = (repr(d) if d is not None else "not searched"
                       for d in (space.get(name), stored.get(name)))
        raise ConfigError(f"hydra.sweeper.params: {name} is {here} here but {there} in the study "
                          f"{study.study_name} in {where(url)}: continue it with its own params, "
                          "or start another study with hydra.sweeper.study_name=<name>")


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards n_trials: finished, running, or failed in its job."""
    if trial.state == TrialState.FAIL:
        return JOB_FAILED in trial.user_attrs
    return trial.state != TrialState.WAITING


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the running trials whose heartbeat stopped STALE_AFTER_S ago: their sweep died."""
    with warnings.catch_warnings(), contextlib.suppress(RuntimeError):  # failed by another sweep
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def heartbeats(study: optuna.Study, running: dict[int, Trial]) -> Iterator[None]:
    """Tell the database every HEARTBEAT_S seconds that this sweep's running trials are alive."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            for trial in list(running.values()):
                with contextlib.suppress(Exception):  # the main thread reports a broken database
                    study._storage.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, name="optuna-heartbeats", daemon=True)
    if study._storage.is_heartbeat_enabled():
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()


def give_back(study: optuna.Study, trial: Trial) -> None:
    """Tell the study that a trial this sweep asked for will not finish: failed, not counted."""
    try:
        study.tell(trial, state=TrialState.FAIL)
    except Exception as err:  # the database itself may be what stopped the sweep
        log.warning("trial %d stays running in the study: %s", trial.number, err)
