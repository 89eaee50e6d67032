"""gentrain's Optuna sweeper, `hydra/sweeper=optuna_study`: hydra-optuna-sweeper's settings and
search over a stored study (optuna_study.py) that searches stopped half-way, or running at once on
machines sharing its database, continue together.

n_trials counts the whole study: before each batch of n_jobs trials the sweeper counts the
study's trials and asks for the rest only, and an asked trial runs only if fewer than n_trials
counted trials precede it, so a race for the last trials runs them once. A trial asked for and not
finished (Ctrl-C, SIGTERM, an error, a race lost) is given back. A seeded sampler is made anew for
each trial from its seed and the trial's number: a continued or concurrent search draws new points,
and the same study draws the same points again.

Hydra takes sweepers from the hydra_plugins package only: hydra_plugins/gentrain_launcher registers
the class.
"""

from __future__ import annotations

import bisect
import logging
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np
import optuna
from hydra.core.utils import JobReturn
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GridSampler
from optuna.trial import FrozenTrial, Trial, TrialState

from gentrain.optuna_study import (
    JOB_FAILED, check_search_space, counts, current_trials, fail_stale_trials, give_back,
    heartbeats, open_study, storage_errors, where,
)

log = logging.getLogger(__name__)


class SeededPerTrial(BaseSampler):
    """The configured sampler, made anew for each trial with a seed drawn from its own and the
    trial's number (started again from its own seed, it would repeat the draws already stored)."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._current: tuple[int, Optional[BaseSampler]] = (-1, None)

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        number, sampler = self._current
        if number != trial.number or sampler is None:
            seed = np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]
            sampler = self._make(int(seed))
            self._current = (trial.number, sampler)
        return sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str,
                           distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, name, distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Optional[Sequence[float]]) -> None:
        self._for(trial).after_trial(study, trial, state, values)


class StudySweeper(OptunaSweeperImpl):
    """hydra-optuna-sweeper's sweeper (its settings, search space syntax and
    optimization_results.yaml) over a study that sweeps continue and share (module docstring)."""

    def sweep(self, arguments: list[str]) -> None:
        optuna.logging.disable_default_handler()  # optuna's lines join the sweep's log, not stderr
        optuna.logging.enable_propagation()
        self._process_searchspace_config()
        space, fixed = create_params_from_overrides(self._parse_sweeper_params_config() + arguments)
        space = {**(self.search_space_distributions or {}), **space}
        space = {name: d for name, d in space.items() if name not in fixed}
        n_trials, sampler = self._sampler(space)
        with storage_errors(self.storage):
            study = open_study(self.storage, self.study_name, sampler, self._get_directions())
            log.info("Study %s in %s: %d trials in all", study.study_name, where(self.storage),
                     n_trials)
            check_search_space(study, space, self.storage,
                               custom_params=self.custom_search_space_extender is not None)
            launched = self._run_trials(study, space, fixed, n_trials)
            self._save_results(study)
        if not launched:
            print(f"gentrain: the study {study.study_name} in {where(self.storage)} already has "
                  f"its {n_trials} trials (finished or running; n_trials counts the whole study)")
            raise SystemExit(0)

    def _sampler(self, space: dict[str, BaseDistribution]) -> tuple[int, BaseSampler]:
        """-> n_trials (the grid's size at most) and the sampler: GridSampler built on the grid, a
        seeded one made anew for each trial."""
        if getattr(self.sampler, "func", None) is GridSampler:  # hydra gives it without its grid
            grid = {name: self._to_grid_sampler_choices(d) for name, d in space.items()}
            return min(self.n_trials, math.prod(map(len, grid.values()))), self.sampler(grid)
        config = OmegaConf.select(self.config, "hydra.sweeper.sampler")
        if config is None or config.get("seed") is None:
            return self.n_trials, self.sampler
        return self.n_trials, SeededPerTrial(lambda seed: instantiate(config, seed=seed),
                                             config.seed)

    def _run_trials(self, study: optuna.Study, space: dict, fixed: dict, n_trials: int) -> int:
        """Batches of n_jobs trials until the study counts n_trials -> how many this sweep ran."""
        running: dict[int, Trial] = {}  # asked for, not told yet: given back on any way out
        launched = 0
        try:
            with heartbeats(study, running):
                while batch := self._claim(study, n_trials, running):
                    overrides = self._configure_trials(batch, space, fixed)
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                    self.job_idx += len(returns)
                    launched += len(returns)
                    self._tell(study, batch, returns, running)
        finally:
            for trial in running.values():
                give_back(study, trial)
        return launched

    def _claim(self, study: optuna.Study, n_trials: int, running: dict[int, Trial]) -> list[Trial]:
        """The next batch, asked for after counting the study and kept only while fewer than
        n_trials counted trials precede it (another sweep may have asked at the same moment)."""
        fail_stale_trials(study)
        for _ in range(min(self.n_jobs, n_trials - sum(map(counts, current_trials(study))))):
            trial = study.ask()
            running[trial.number] = trial
            if study._storage.is_heartbeat_enabled():
                study._storage.record_heartbeat(trial._trial_id)
        counted = sorted(t.number for t in current_trials(study) if counts(t))
        for number in [n for n in running if bisect.bisect_left(counted, n) >= n_trials]:
            log.info("trial %d: another sweep took the study's last trials first", number)
            give_back(study, running.pop(number))
        return list(running.values())

    def _tell(self, study: optuna.Study, trials: list[Trial], returns: Sequence[JobReturn],
              running: dict[int, Trial]) -> None:
        """Each job's value to the study; a job that failed (gentrain's return NaN) is a failed
        trial that counts."""
        failures = []
        for trial, result in zip(trials, returns):
            try:
                value = result.return_value
                values = [float(v) for v in (value if len(study.directions) > 1 else [value])]
                if len(values) != len(study.directions) or not all(map(math.isfinite, values)):
                    raise ValueError(f"the job returned {value!r}")
            except Exception as err:
                log.warning("Failed experiment: %s", err)
                failures.append(err)
                trial.set_user_attr(JOB_FAILED, True)
                study.tell(trial, state=TrialState.FAIL)
            else:
                try:
                    study.tell(trial, values=values)
                except RuntimeError as err:  # GridSampler stops the study at the grid's end: told
                    if "Study.stop" not in str(err):
                        raise
            del running[trial.number]
        if len(failures) / len(returns) > self.max_failure_rate:
            log.error("Failed %d times out of %d with max_failure_rate=%s", len(failures),
                      len(returns), self.max_failure_rate)
            for result in returns:
                result.return_value  # raises the job's own error, if it raised one

    def _save_results(self, study: optuna.Study) -> None:
        """optimization_results.yaml in the sweep directory: the study's best so far."""
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.warning("No trial of the study has completed: no optimization_results.yaml")
            return
        if len(study.directions) == 1:
            best = study.best_trial
            results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info("Best parameters: %s, value: %s", best.params, best.value)
        else:
            results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values}
                                                        for t in study.best_trials]}
        OmegaConf.save(OmegaConf.create(results),
                       f"{self.config.hydra.sweep.dir}/optimization_results.yaml")
