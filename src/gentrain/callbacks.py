"""Hydra callbacks: checks and summaries that wrap a run or a sweep (configured in configs/config.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def _require_writable(directory: Path, key: str, *, may_hold_run: bool) -> None:
    """One line and exit 2 when the directory cannot be written or lies in another run's files (rundir.py:
    refuse_run_files). Hydra turns an exception raised in a callback into a warning and carries on, so this
    exits directly."""
    from gentrain.errors import EXIT_USER_ERROR, RunDirectoryError
    from gentrain.rundir import refuse_run_files, require_writable

    try:
        refuse_run_files(directory, key, itself=not may_hold_run)
        require_writable(directory, f"choose another with {key}=...")
    except RunDirectoryError as err:
        print(f"gentrain: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


class RunDirectoryCheck(Callback):
    """Refuse to start when the run or sweep directory is not writable or lies in another run's files (instead
    of a traceback mid-start, or files mixed with a run's)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable(Path(config.hydra.run.dir), "hydra.run.dir", may_hold_run=True)  # resumed there

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from gentrain.rundir import claim_sweep_directory, foreign_files
        from gentrain.run_names import named_by_launch_time

        sweep_dir = Path(config.hydra.sweep.dir)
        _require_writable(sweep_dir, "hydra.sweep.dir", may_hold_run=False)
        if named_by_launch_time(config.hydra.sweep):  # one command's; a chosen directory is reused
            claim_sweep_directory(sweep_dir)
        elif foreign_files(sweep_dir, sweep=True):  # a folder of the user's: its summaries would be replaced
            theirs = ", ".join(foreign_files(sweep_dir, sweep=True))
            print(f"gentrain: error: {sweep_dir} already has {theirs}, "
                  f"not from a gentrain sweep: choose an empty or new hydra.sweep.dir", file=sys.stderr)
            raise SystemExit(2)


class SweepSummary(Callback):
    """After a sweep: summary.csv / summary.md in the sweep directory, and a non-zero exit if any job
    failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from gentrain.sweeps import write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = write_summary(sweep_dir)
        if not jobs:
            print(f"gentrain: error: the sweep left no job in {sweep_dir}", file=sys.stderr)
            raise SystemExit(1)
        failed = [j for j in jobs if j["status"] != "finished"]
        print(f"gentrain: sweep of {len(jobs)} jobs finished, {len(failed)} failed; "
              f"summary: {sweep_dir / 'summary.md'}")
        for job in failed:
            overrides = " ".join(job.get("overrides", []))
            print(f"  job {job.get('job')} ({overrides}): {job['status']}: {job.get('error', '')}")
        if failed:
            raise SystemExit(1)
