"""gentrain's Optuna sweeper (gentrain/optuna_sweeper.py, optuna_study.py) against a SQLite study, driven
directly: its launcher is a stand-in whose jobs return their `x` at once, so each test takes a second or two,
not a training per trial."""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import TrialState

from gentrain.errors import ConfigError, RunDirectoryError
from gentrain.optuna_study import JOB_FAILED, counts, open_study
from gentrain.optuna_sweeper import StudySweeper

SPACE = {"x": "interval(0, 1)", "k": "choice(1, 2, 3, 4)"}


class Jobs:
    """The launcher: each job returns its x (or what `value` makes of it) after `seconds`."""

    def __init__(self, value: Callable[[float], float] = float, seconds: float = 0.0) -> None:
        self.value, self.seconds, self.launched = value, seconds, 0

    def launch(self, overrides: list, initial_job_idx: int) -> list[JobReturn]:
        time.sleep(self.seconds)
        self.launched += len(overrides)
        values = [self.value(float(dict(o.split("=") for o in job)["x"])) for job in overrides]
        return [JobReturn(overrides=list(job), status=JobStatus.COMPLETED, _return_value=v)
                for job, v in zip(overrides, values)]


def interrupted(x: float) -> float:
    raise KeyboardInterrupt  # Ctrl-C during the job


def sweep(storage: str, n_trials: int, jobs: Optional[Jobs] = None, space: Optional[dict] = None,
          n_jobs: int = 1) -> Jobs:
    """One `gentrain -m` sweep of the study `study` in `storage`, as Hydra would set it up."""
    sampler = OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "seed": 0})
    sweeper = StudySweeper(sampler=instantiate(sampler), direction="minimize", storage=storage,
                           study_name="study", n_trials=n_trials, n_jobs=n_jobs, max_failure_rate=1.0,
                           search_space=None, custom_search_space=None,
                           params=OmegaConf.create(space or SPACE))
    sweep_dir = Path(storage.removeprefix("sqlite:///")).parent
    hydra = {"sweep": {"dir": str(sweep_dir)}, "sweeper": {"sampler": sampler}}
    sweeper.config = OmegaConf.create({"hydra": hydra})
    sweeper.launcher = jobs or Jobs()
    sweeper.sweep([])
    return sweeper.launcher


def trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="study", storage=storage).trials


def test_a_continued_search_draws_new_points_the_same_each_time(tmp_path: Path) -> None:
    """Stopped after 3 trials and continued to 6, a search draws what one uninterrupted search draws: new
    points (a sampler started again from its seed would repeat the first 3), and the same ones again."""
    continued, whole = f"sqlite:///{tmp_path / 'continued.db'}", f"sqlite:///{tmp_path / 'whole.db'}"
    sweep(continued, 3)
    sweep(continued, 6)
    sweep(whole, 6)
    points = [t.params["x"] for t in trials(continued)]
    assert len(set(points)) == 6 and points == [t.params["x"] for t in trials(whole)]


def test_concurrent_searches_share_the_trials_of_one_study(tmp_path: Path) -> None:
    """Two sweeps on one study at once (two machines, one database), in batches of two trials, run n_trials
    in all, each point once."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep(storage, 1)  # the study exists: this test is about the trials, the next about creating it
    launchers = [Jobs(seconds=0.05), Jobs(seconds=0.05)]
    threads = [threading.Thread(target=sweep, args=(storage, 8, jobs), kwargs={"n_jobs": 2})
               for jobs in launchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = trials(storage)
    assert [t.state for t in stored if counts(t)] == [TrialState.COMPLETE] * 8
    assert sum(jobs.launched for jobs in launchers) == 7
    assert len({t.params["x"] for t in stored if t.state == TrialState.COMPLETE}) == 8


def test_the_last_trial_runs_once_when_two_sweeps_ask_for_it_at_once(tmp_path: Path, monkeypatch) -> None:
    """Another sweep asks for the study's last trial between this sweep's count and its own ask: this sweep
    gives its trial back (failed, not counted) and runs nothing."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep(storage, 1)
    other = optuna.load_study(study_name="study", storage=storage)
    ask = optuna.Study.ask

    def other_sweep_first(study: optuna.Study, *args, **kwargs):
        monkeypatch.setattr(optuna.Study, "ask", ask)
        other.ask()
        return ask(study, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "ask", other_sweep_first)
    with pytest.raises(SystemExit) as exit_info:
        sweep(storage, 2)
    assert exit_info.value.code == 0
    assert [(t.state, counts(t)) for t in trials(storage)] == [
        (TrialState.COMPLETE, True), (TrialState.RUNNING, True), (TrialState.FAIL, False)]


def test_sweeps_creating_one_study_at_once_all_open_it(tmp_path: Path) -> None:
    """The first creates the tables and the study; the others lost that race and open it."""
    for attempt in range(3):
        storage, errors = f"sqlite:///{tmp_path / f'study{attempt}.db'}", []
        start = threading.Barrier(4)

        def open_it() -> None:
            start.wait()
            try:
                open_study(storage, "study", optuna.samplers.RandomSampler(), ["minimize"])
            except Exception as err:
                errors.append(repr(err))
            gc.collect()  # in this thread: SQLite refuses to close a connection from another one

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert len(optuna.get_all_study_summaries(storage)) == 1


def test_a_changed_search_space_is_refused_before_any_trial(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep(storage, 2)
    other_choices = ({**SPACE, "k": "choice(1, 2, 8)"}, "choices=(1, 2, 8)", "choices=(1, 2, 3, 4)")
    fewer_params = ({"x": "interval(0, 1)"}, "not searched", "choices=(1, 2, 3, 4)")
    for changed, here, stored in (other_choices, fewer_params):
        with pytest.raises(ConfigError) as error:
            sweep(storage, 4, space=changed)
        message = str(error.value)
        assert message.startswith("hydra.sweeper.params: k is ") and here in message and stored in message
        assert "\n" not in message and [t.state for t in trials(storage)] == [TrialState.COMPLETE] * 2


def test_an_interrupted_trial_is_failed_and_replaced_a_failed_job_counts(tmp_path: Path) -> None:
    """Ctrl-C during a job: its trial is told failed and does not count; a job that failed (gentrain's return
    NaN) counts. Continued, the search runs the trial that was cut off again, as a new point."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep(storage, 1, Jobs(value=lambda x: float("nan")))
    with pytest.raises(KeyboardInterrupt):
        sweep(storage, 3, Jobs(value=interrupted))
    states = [(t.state, counts(t)) for t in trials(storage)]
    assert states == [(TrialState.FAIL, True), (TrialState.FAIL, False)]
    assert trials(storage)[0].user_attrs[JOB_FAILED]
    assert sweep(storage, 3).launched == 2
    assert [t.state for t in trials(storage)][2:] == [TrialState.COMPLETE] * 2


def test_a_trial_whose_sweep_died_stops_counting_once_its_heartbeat_is_old(tmp_path: Path) -> None:
    """kill -9, a lost machine: nobody tells the study; the trial's heartbeat stops, and the next count fails
    it."""
    storage, file = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "study.db"
    sweep(storage, 1)
    study = optuna.load_study(study_name="study", storage=storage)
    study._storage.record_heartbeat(study.ask()._trial_id)
    with sqlite3.connect(file) as db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')")
    assert sweep(storage, 3).launched == 2
    complete, fail = TrialState.COMPLETE, TrialState.FAIL
    assert [t.state for t in trials(storage)] == [complete, fail, complete, complete]


def not_sqlite(file: Path) -> None:
    file.write_text("x = 1\n" * 100)


def truncated_study(file: Path) -> None:
    sweep(f"sqlite:///{file}", 3)
    file.write_bytes(file.read_bytes()[:2000])


def other_database(file: Path) -> None:
    with sqlite3.connect(file) as db:
        db.execute("CREATE TABLE invoices (total REAL)")


@pytest.mark.parametrize("damage", [not_sqlite, truncated_study, other_database])
def test_a_file_that_is_not_a_study_database_is_refused_in_one_line(tmp_path: Path, damage) -> None:
    file = tmp_path / "study.db"
    damage(file)
    before = file.read_bytes()
    with pytest.raises(RunDirectoryError) as error:
        sweep(f"sqlite:///{file}", 4)
    message = str(error.value)
    assert message.startswith(f"{file}: not a usable Optuna study database: ") and "\n" not in message
    assert "sqlalche" not in message and file.read_bytes() == before


@pytest.mark.parametrize("message, retried", [
    ("database is locked", True), ("table studies already exists", True),
    ("disk I/O error", False), ("attempt to write a readonly database", False)])
def test_only_a_lost_race_is_retried(message: str, retried: bool) -> None:
    """A sweep that lost the creation race, or the write lock SQLite refuses to wait for, tries again; a
    database that cannot be written fails at once."""
    from sqlalchemy.exc import OperationalError

    from gentrain.optuna_study import _lost_creation_race

    try:
        try:
            raise OperationalError("INSERT", {}, sqlite3.OperationalError(message))
        except OperationalError as driver:
            raise optuna.exceptions.StorageInternalError("during the commit") from driver
    except optuna.exceptions.StorageInternalError as err:
        assert _lost_creation_race(err) is retried
