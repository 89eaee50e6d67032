"""Summaries of sweeps: one row per job with its overrides, status, final metrics and wall time; and how many
trials an Optuna search still has to run when it continues a stored study."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from gentrain.errors import RunDirectoryError
from gentrain.files import write_file
from gentrain.run_names import NOT_A_SETTING
from gentrain.rundir import read_json, read_yaml


def read_job(job_dir: Path) -> dict[str, Any]:
    """One job of a sweep, from the status.json its run wrote (a job killed before finishing has none). Files are
    read as data (rundir.py); a damaged one makes the job's row say so instead of failing the summary."""
    status_file, overrides_file = job_dir / "status.json", job_dir / ".hydra" / "overrides.yaml"
    try:
        if status_file.is_file():
            status = read_json(status_file)
            if isinstance(status, dict) and isinstance(status.get("status"), str):
                job = {"overrides": [], "job": None, **status, "dir": job_dir}
                finished_fields = isinstance(job.get("main_metric"), str) and isinstance(job.get("val"), dict) \
                    and isinstance(job.get("test"), dict)
                if job["status"] != "finished" or finished_fields:
                    return job
            raise RunDirectoryError(f"{status_file} is not a gentrain status")
        overrides = read_yaml(overrides_file) if overrides_file.is_file() else []
        overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
        return {"dir": job_dir, "status": "did not finish", "overrides": overrides, "job": None}
    except RunDirectoryError as err:
        return {"dir": job_dir, "status": "unreadable", "overrides": [], "job": None, "error": str(err)}


def sweep_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    job_dirs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()] if sweep_dir.is_dir() else []
    return [read_job(d) for d in sorted(job_dirs, key=lambda p: (len(p.name), p.name))]


def _main_value(job: dict[str, Any]) -> float:
    if job["status"] != "finished":
        return math.inf
    return float(job["val"].get(job["main_metric"], math.inf))


def swept_settings(jobs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, str]]]:
    """-> the keys whose values differ between the jobs (their overrides), and each job's key -> value."""
    settings = [dict(o.split("=", 1) for o in job.get("overrides", []) if "=" in o and o.split("=", 1)[0] not in
                     NOT_A_SETTING) for job in jobs]
    keys = sorted({k for s in settings for k in s})
    differing = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    return differing, settings


def summary_rows(jobs: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """-> header and rows of raw values, best first by the validation main metric (every main metric is minimised):
    one column per swept key, then status, metrics, wall time and error."""
    ordered = sorted(jobs, key=_main_value)
    swept, settings = swept_settings(ordered)
    main_metrics = sorted({j["main_metric"] for j in jobs if j["status"] == "finished"})
    test_keys = sorted({k for j in jobs if j["status"] == "finished" for k in j["test"]})
    header = ["job", *swept, "status"] + [f"val/{m}" for m in main_metrics] + [f"test/{k}" for k in test_keys] \
        + ["wall_s", "error"]
    rows = []
    for job, values in zip(ordered, settings):
        val, test = (job["val"], job["test"]) if job["status"] == "finished" else ({}, {})
        number = job.get("job") if job.get("job") is not None else job["dir"].name
        rows.append(
            [number, *(values.get(k, "") for k in swept), job["status"]]
            + [val.get(m) for m in main_metrics]
            + [test.get(k) for k in test_keys]
            + [job.get("wall_seconds"), job.get("error", "")]
        )
    return header, rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write summary.csv (full precision) and summary.md (rounded) into the sweep directory; return the jobs."""
    jobs = sweep_jobs(sweep_dir)
    header, rows = summary_rows(jobs)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    write_file(sweep_dir / "summary.csv", table.getvalue(), root=sweep_dir)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    write_file(sweep_dir / "summary.md", "\n".join(lines) + "\n", root=sweep_dir)
    return jobs


def optuna_trials_left(total: int, *, _parent_: Any) -> int:
    """The `optuna_trials_left` resolver, `hydra.sweeper.n_trials: ${optuna_trials_left:20}`, for
    hydra-optuna-sweeper's own sweeper (hydra/sweeper=optuna): `total` minus the trials the stored study
    (its `storage` and `study_name`) already finished (complete, pruned or failed), counted once as the
    sweep starts. gentrain's sweeper (hydra/sweeper=optuna_study) counts the whole study itself before
    each batch: there it is `total`."""
    storage, study_name = _parent_.get("storage"), _parent_.get("study_name")
    if not storage or str(_parent_.get("_target_")).startswith("hydra_plugins.gentrain_launcher."):
        return int(total)
    import optuna

    if str(storage).startswith("sqlite:///"):  # SQLite creates the file, not its folder
        optuna_storage(str(storage).removeprefix("sqlite:///"))
    try:
        study = optuna.load_study(study_name=study_name, storage=str(storage))
    except KeyError:  # no such study yet: the search starts
        return int(total)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    return max(0, int(total) - len(finished))


def optuna_storage(path: str) -> str:
    """The `optuna_storage` resolver: a SQLite URL for a study file, its folder created (SQLite creates only the
    file); the absolute path keeps every job of a sweep on one file whatever its working directory."""
    file = Path(path).expanduser().absolute()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"
