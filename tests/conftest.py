"""Shared fixtures: the offline datasets, in-process composition and training, and the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from omegaconf import DictConfig

from gentrain.composition import compose, register

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GENTRAIN_DATA") or REPO.parent / "shared" / "datasets").absolute()

register()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/datasets (or $GENTRAIN_DATA): real MNIST and the CIFAR-10 / CelebA subsets."""
    if not (SHARED_DATA / "MNIST").is_dir():
        pytest.skip(f"the offline datasets are not at {SHARED_DATA} (set GENTRAIN_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Decoded-image caches go to a per-session temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of small-tensor tests: as fast on 2 cores, and no OpenMP spin-waits eating
    CPU when the machine is busy. Pair with ONE_THREAD_ENV for subprocesses."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1"}
# Runs inside the test process: the offline data, and one torch thread (train() would otherwise take every core).
IN_PROCESS_ENV = {"GENTRAIN_DATA": str(SHARED_DATA), **ONE_THREAD_ENV}


def compose_config(*overrides: str) -> DictConfig:
    """The config `gentrain <overrides>` would compose."""
    return compose(overrides)


def train_in_process(run_dir: Path, *overrides: str) -> dict:
    """Train as the CLI would (same wiring), in this process: fast enough for many small runs."""
    from gentrain.run import train

    cfg = compose_config(f"dataset.root={SHARED_DATA}", "trainer.progress_bar=false", *overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(os.environ, IN_PROCESS_ENV):
        return train(cfg, run_dir)


def command_in_process(main, *args: str) -> tuple[int, str, str]:
    """A command's main(argv) in this process -> (exit status, stdout, stderr): the same code path as the real
    command without the seconds a new process spends importing torch. For tests that monkeypatch, and for many
    quick cases. $GENTRAIN_DATA points at the offline datasets, as for run_cli."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, IN_PROCESS_ENV), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            main(list(args))
            status = 0
        except SystemExit as exit_info:
            status = exit_info.code
    return status, out.getvalue(), err.getvalue()


def gentrain_in_process(*args: str, run_dir: Path | None = None) -> tuple[int, str, str]:
    """`gentrain <args> [hydra.run.dir=<run_dir>]` in this process (command_in_process)."""
    from gentrain import cli

    def main(argv: list[str]) -> None:
        with mock.patch.object(sys, "argv", ["gentrain", *argv]):
            cli.main()

    return command_in_process(main, *args, *([f"hydra.run.dir={run_dir}"] if run_dir else []))


def _cli_env(env: dict | None) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"GENTRAIN_DATA": str(SHARED_DATA), "PYTHONUNBUFFERED": "1", **(env or {})})
    return full_env


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m gentrain <args>` in a subprocess, with the offline datasets as $GENTRAIN_DATA."""
    return subprocess.run(
        [sys.executable, "-m", "gentrain", *args], cwd=cwd, env=_cli_env(env), capture_output=True, text=True,
        timeout=timeout,
    )


def start_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Like run_cli, without waiting: for tests that signal or kill the run."""
    return subprocess.Popen(
        [sys.executable, "-m", "gentrain", *args], cwd=cwd, env=_cli_env(env), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
