"""Hydra callbacks: checks and summaries that wrap a run or a sweep (configured in configs/config.yaml)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

EXIT_USER_ERROR = 2


def _require_writable(directory: Path, override: str) -> None:
    """Exit with one line, before anything runs, when the output directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".gentrain-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        print(
            f"gentrain: error: cannot write the run directory {directory} ({err.strerror or err}); "
            f"choose another with {override}=...",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USER_ERROR) from None


class RunDirectoryCheck(Callback):
    """Refuse to start when the run or sweep directory is not writable (instead of a traceback mid-start)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


class SweepSummary(Callback):
    """After a sweep: summary.csv / summary.md in the sweep directory, and a non-zero exit if any job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from gentrain.sweeps import write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = write_summary(sweep_dir)
        failed = [j for j in jobs if j["status"] != "finished"]
        print(f"gentrain: sweep of {len(jobs)} jobs finished, {len(failed)} failed; summary: {sweep_dir / 'summary.md'}")
        for job in failed:
            print(f"  job {job.get('job')} ({' '.join(job.get('overrides', []))}): {job['status']}: {job.get('error', '')}")
        if failed:
            raise SystemExit(1)
