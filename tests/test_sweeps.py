"""Sweeps: parallel jobs with the joblib launcher, the Optuna example, the SLURM preset and the summaries."""

from __future__ import annotations

import csv
import datetime
import math
import os
from pathlib import Path
from types import SimpleNamespace

import yaml
from conftest import gentrain_in_process, run_cli
from hydra import compose, initialize_config_module
from test_run_directory import one_error_line

QUICK = ("trainer=debug", "model.arch=mlp", "model.hidden=[32]", "model.iw_samples=2", "trainer.max_steps=4",
         "trainer.eval_limit=100")


def announced_sweep_dir(output: str, cwd: Path) -> Path:
    """The sweep directory the command announced at its end ('summary: <dir>/summary.md')."""
    line = next(line for line in output.splitlines() if line.startswith("gentrain: sweep of"))
    return cwd / line.rsplit("summary: ", 1)[1].removesuffix("/summary.md")


def test_joblib_sweep_lands_where_it_says(tmp_path: Path, shared_data: Path) -> None:
    """Two parallel jobs (loky workers import gentrain anew) land in the announced directory, named by what
    differs, with a two-row summary; their log lines say which job they come from."""
    result = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *QUICK, "model.latent_dim=4,8",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    sweep = announced_sweep_dir(result.stdout, tmp_path)
    assert f"sweep output dir : {sweep.relative_to(tmp_path)}" in result.stdout + result.stderr  # Hydra's line
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_latent_dim=4", "1_latent_dim=8"]
    assert len(list((tmp_path / "outputs" / "multirun").glob("*/*"))) == 1  # one sweep directory, not one per job
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model.latent_dim"] for r in rows) == ["4", "8"] and "trainer" not in rows[0]
    assert all(r["status"] == "finished" for r in rows)
    values = [float(r["val/bits_per_dim"]) for r in rows]
    assert values == sorted(values)  # best first
    header = (sweep / "summary.md").read_text().splitlines()[0]
    assert "model.latent_dim" in header and "model.arch" not in header  # constants are not repeated
    assert "[job 0]" in result.stdout and "[job 1]" in result.stdout
    assert "CPU threads: 1 (" in result.stdout or (os.cpu_count() or 1) > 2  # 2 cores shared by 2 jobs


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


def test_an_interrupted_optuna_search_continues_where_it_stopped(tmp_path: Path, shared_data: Path) -> None:
    """The study lives in a database: started again, the search keeps its finished trials and runs only the
    rest of n_trials (the study's total, as the earlier ${optuna_trials_left:N} says), at new points (its
    sampler does not draw the stored ones again), in a new sweep directory. Once the study holds n_trials, the
    command runs nothing."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'db' / 'study.db'}"
    search = ("-m", "experiment=vae_optuna_search", *QUICK, f"hydra.sweeper.storage={storage}")
    for total, sweep in ((2, "first"), (3, "second")):
        result = run_cli(*search, f"hydra.sweeper.n_trials='${{optuna_trials_left:{total}}}'",
                         f"hydra.sweep.dir={tmp_path / sweep}", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna.load_study(study_name="vae_lr_latent", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert trials[2].params["trainer.lr"] not in {t.params["trainer.lr"] for t in trials[:2]}
    new_jobs = [p for p in (tmp_path / "second").iterdir() if p.is_dir() and p.name[0].isdigit()]
    assert len(new_jobs) == 1
    status, out, err = gentrain_in_process(*search, "hydra.sweeper.n_trials=3",
                                           f"hydra.sweep.dir={tmp_path / 'full'}")
    assert status == 0 and "already has its 3 trials" in out, out + err


def test_an_optuna_study_that_does_not_fit_stops_the_search_in_one_line(tmp_path: Path) -> None:
    """A file that is not a study's database, or a study of another search space: exit 2 with one line naming
    it (optuna's own lines join the sweep's log on stdout), before any trial (none left running)."""
    import optuna

    notes, study_file = tmp_path / "notes.db", tmp_path / "study.db"
    notes.write_text("not a database\n" * 100)
    study = optuna.create_study(study_name="vae_lr_latent", storage=f"sqlite:///{study_file}")
    study.optimize(lambda trial: trial.suggest_categorical("model.latent_dim", [8, 16]), n_trials=1)
    not_a_study = f"{notes}: not a usable Optuna study database: file is not a database"
    other_space = ("hydra.sweeper.params: model.latent_dim is CategoricalDistribution(choices=(8, 16, 32, "
                   "64)) here but CategoricalDistribution(choices=(8, 16)) in the study vae_lr_latent in "
                   f"{study_file}")
    for file, message in ((notes, not_a_study), (study_file, other_space)):
        line = one_error_line(run_cli("-m", "experiment=vae_optuna_search", *QUICK,
                                      f"hydra.sweeper.storage=sqlite:///{file}", cwd=tmp_path))
        assert line.startswith(f"gentrain: error: {message}"), line
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]


def test_slurm_launcher_preset_composes() -> None:
    with initialize_config_module(config_module="gentrain.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.timeout_min == 240 and launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1


def test_a_requeued_job_keeps_its_row_and_adds_no_column() -> None:
    from gentrain.sweeps import swept_settings

    jobs = [{"overrides": ["model.latent_dim=4"]}, {"overrides": ["model.latent_dim=8", "trainer.resume=auto"]}]
    differing, settings = swept_settings(jobs)
    assert differing == ["model.latent_dim"] and settings[1] == {"model.latent_dim": "8"}


def test_sweeps_started_in_the_same_second_keep_their_own_directories(tmp_path: Path, monkeypatch) -> None:
    """Two `gentrain -m` commands started in the same second: the second finds the sweep directory that second
    names claimed and takes the next second's, so neither's jobs, multirun.yaml or summary mix with the other's."""
    from gentrain import cli

    second = datetime.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(cli, "datetime", SimpleNamespace(datetime=SimpleNamespace(now=lambda: second),
                                                         timedelta=datetime.timedelta))
    monkeypatch.chdir(tmp_path)
    day = tmp_path / "outputs" / "multirun" / "2026-01-02"
    first_dir, second_dir = day / "03-04-05", day / "03-04-06"
    status, out, err = gentrain_in_process("-m", *QUICK, "model.latent_dim=4,8")
    assert status == 0, out + err
    before = {p: p.read_bytes() for p in first_dir.rglob("*") if p.is_file()}
    status, out, err = gentrain_in_process("-m", *QUICK, "seed=1,2")
    assert status == 0, out + err
    assert {p: p.read_bytes() for p in first_dir.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in first_dir.iterdir() if p.is_dir()) == ["0_latent_dim=4", "1_latent_dim=8"]
    assert sorted(p.name for p in second_dir.iterdir() if p.is_dir()) == ["0_seed=1", "1_seed=2"]
    with open(second_dir / "summary.csv") as f:
        assert sorted(row["seed"] for row in csv.DictReader(f)) == ["1", "2"]
