"""Sweeps: parallel jobs with the joblib launcher, the Optuna example, the SLURM preset and the summaries."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import yaml
from conftest import run_cli
from hydra import compose, initialize_config_module

QUICK = ("trainer=debug", "model.arch=mlp", "model.hidden=[32]", "model.iw_samples=2", "trainer.max_steps=4",
         "trainer.eval_limit=100")


def test_joblib_launcher_runs_a_two_job_sweep(tmp_path: Path, shared_data: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *QUICK, "model.latent_dim=4,8",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Joblib" in result.stdout + result.stderr
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["overrides"].split()[-1] for r in rows) == ["model.latent_dim=4", "model.latent_dim=8"]
    assert all(r["status"] == "finished" for r in rows)
    values = [float(r["val/bits_per_dim"]) for r in rows]
    assert values == sorted(values)  # best first


def test_optuna_example_minimises_validation_bits_per_dim(tmp_path: Path, shared_data: Path) -> None:
    sweep = tmp_path / "optuna"
    result = run_cli("-m", "experiment=vae_optuna_search", *QUICK, "hydra.sweeper.n_trials=2",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    with open(sweep / "summary.csv") as f:
        values = [float(r["val/bits_per_dim"]) for r in csv.DictReader(f)]
    assert len(values) == 2 and math.isclose(best["best_value"], min(values), rel_tol=1e-6)
    assert set(best["best_params"]) == {"trainer.lr", "model.latent_dim"}


def test_slurm_launcher_preset_composes() -> None:
    with initialize_config_module(config_module="gentrain.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.timeout_min == 240 and launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
