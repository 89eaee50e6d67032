"""The `gentrain` command: compose the config with Hydra, build model, data and trainer, and fit.

Exit statuses are errors.py's contract: a user error (a bad value, Hydra's own composition errors, missing data,
a run directory in use...) prints one line on stderr and exits with 2; a signal exits with 128 + its number; a
bug prints its traceback and exits with 1. HYDRA_FULL_ERROR=1 shows the traceback of user errors too.

A run directory is data (rundir.py): the run locks it first, and writes nothing into it (no .hydra/, train.log or
status.json) until every check has passed, so a refused command leaves an existing run byte-identical. In a
sweep (`-m`) a failing job is recorded in its status.json and the other jobs still run (callbacks.py).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from gentrain import distributed
from gentrain.errors import (
    USER_FULL_ERROR, GentrainError, Preempted, RunDirectoryError, Stopped, exit_statuses, full_errors, is_user_error,
    one_line,
)

log = logging.getLogger("gentrain")

# The error that ended a single run, raised again once Hydra has returned: raised inside the task, Hydra would
# add a line of its own ("Error executing job with overrides: ...") to our one-line message.
_failure: list[BaseException] = []


def train(cfg: Any, run_dir: Path, *, before_training: Callable[[], None] = lambda: None,
          parallel_jobs: int = 1, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Build everything a config describes, train it in `run_dir`, and return the final metrics.

    Every check comes first, in order of cost: values, then the model against the shape the data will have,
    then the checkpoint to resume from, then the data itself. `before_training` runs once they all passed.
    `parallel_jobs`: jobs of a sweep running at once on this machine (they share its cores); `overrides`: the
    command line's, shown in TensorBoard's HPARAMS tab.
    """
    from omegaconf import OmegaConf

    from gentrain.checkpoint import check_identity, load_checkpoint, resume_source
    from gentrain.composition import to_config
    from gentrain.data import expected_info, load_dataset, resolve_root
    from gentrain.logger import run_hparams
    from gentrain.metrics.sample_quality import build_sample_quality
    from gentrain.models import build_model, model_name
    from gentrain.runtime import check_precision, configure_threads, local_processes, pick_device, seed_everything
    from gentrain.trainer import Trainer

    config = to_config(cfg)
    device = pick_device(config.trainer.device)
    check_precision(config.trainer.precision, device)
    configure_threads(config.trainer.num_threads, local_processes(parallel_jobs))
    parallel = distributed.context()
    if parallel.enabled:
        log.info("distributed: rank %d of %d processes, %s backend", parallel.rank, parallel.world_size, parallel.backend)
    # Each process draws its own noise; model initialisation is rank 0's (DDP broadcasts it).
    seed_everything(config.seed + parallel.rank, config.trainer.deterministic)
    info = expected_info(config.dataset)
    model = build_model(config.model, info)
    name = model_name(config.model)
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    identity = {"model": name, "model_config": container["model"], "data": info.__dict__}
    resume_from = resume_source(config.trainer.resume, run_dir)
    state = None
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=device, for_training=True)
        check_identity(state, identity, resume_from, type(model).mutable_settings)
    elif config.trainer.resume == "auto":
        log.info("trainer.resume=auto: no checkpoint in %s yet, starting fresh", run_dir / "checkpoints")

    dataset = load_dataset(config.dataset)
    log.info("data: %s", dataset.describe())
    log.info("model: %s with %s parameters", name, f"{sum(p.numel() for p in model.parameters()):,}")
    # Before the trainer: missing Inception weights or an unusable metrics config stop the run here.
    # Under torchrun the main process alone scores samples.
    sample_metrics = build_sample_quality(
        config.metrics.fid, model=model, dataset=dataset, data_root=resolve_root(getattr(config.dataset, "root", None)),
        device=device, seed=config.seed, progress=config.trainer.progress_bar,
    ) if parallel.is_main else None
    trainer = Trainer(
        model, dataset, config.trainer, run_dir=run_dir, device=device, seed=config.seed,
        identity=identity, hparams=run_hparams(container, list(overrides), name, dataset.name),
        sample_metrics=sample_metrics, config_text=OmegaConf.to_yaml(cfg),
    )
    if state is not None:
        trainer.load_state_dict(state, resume_from)
    before_training()
    return trainer.fit()


def _run_files(cfg: Any) -> dict[str, str]:
    """What Hydra would have written into .hydra/ (it is told not to: rundir.py writes them at commit)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    return {
        ".hydra/config.yaml": OmegaConf.to_yaml(cfg),
        ".hydra/hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
        ".hydra/overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task))),
    }


def _task(cfg: Any) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from gentrain.rundir import LOG_FORMAT, RunDirectory

    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    status = {"job": hydra_cfg.job.num if in_sweep else None, "overrides": list(hydra_cfg.overrides.task)}
    started = time.monotonic()
    log_format = LOG_FORMAT.replace("][%(name)s", f"][job {hydra_cfg.job.num}][%(name)s") if in_sweep else LOG_FORMAT
    if in_sweep:  # parallel jobs share a console: each line says whose it is
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(log_format))
    run = RunDirectory(Path(hydra_cfg.runtime.output_dir), writer=distributed.context().is_main, log_format=log_format)

    def ended(outcome: str, **extra: Any) -> None:
        run.record(outcome, **status, wall_seconds=round(time.monotonic() - started, 1), **extra)

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run)
            log.info("overrides: %s", " ".join(status["overrides"]) or "none (the defaults)")
            result = train(cfg, run.path, before_training=lambda: run.commit(_run_files(cfg)),
                           parallel_jobs=_parallel_jobs(hydra_cfg) if in_sweep else 1, overrides=status["overrides"])
        except Stopped as err:
            ended("preempted" if isinstance(err, Preempted) else "interrupted", error=str(err))
            log.warning("%s", err, extra={"console": False})
            raise
        except Exception as err:
            user_error = is_user_error(err)
            if not in_sweep:
                ended("failed", error=one_line(err))
                if user_error:
                    log.error("%s", one_line(err), extra={"console": False})
                _failure.append(err)
                return float("nan")
            if full_errors():
                raise
            # A sweep keeps going: the failure goes into this job's status.json (a fresh directory gets its
            # .hydra/ files too, so the summary can list it), never into a directory another process uses.
            if not run.committed and not run.had_run and not isinstance(err, RunDirectoryError):
                run.commit(_run_files(cfg))
            ended("failed", error=one_line(err))
            if user_error:
                log.error("job failed: %s", one_line(err))
            else:
                log.exception("job failed: %s", one_line(err))  # keep the traceback in the job's log
            return float("nan")
        ended("finished", main_metric=result["main_metric"], val=result["val"], test=result["test"])
    log.info("run directory: %s", run.path)
    return float(result["val"].get(result["main_metric"], float("nan")))


def _parallel_jobs(hydra_cfg: Any) -> int:
    """How many jobs of this sweep run at once on this machine (joblib's n_jobs; 1 for the other launchers)."""
    n_jobs = hydra_cfg.launcher.get("n_jobs") if "launcher" in hydra_cfg else None
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return 1
    from gentrain.runtime import available_cores

    return n_jobs if n_jobs > 0 else max(1, available_cores() + 1 + n_jobs)  # joblib: -1 = every core


def quote_override(value: str) -> str:
    """A value in Hydra's override grammar whatever characters it holds (paths with '=', ',' or spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _resume_arguments(argv: list[str]) -> list[str]:
    """`trainer.resume=<run dir or checkpoint>` continues that run in its own directory with its own config:
    the run's saved overrides come first (only gentrain's own settings: rundir.replayable_overrides), then those
    given now (which win), then its directory."""
    from gentrain.rundir import replayable_overrides

    given = [a for a in argv[1:] if a.startswith("trainer.resume=")]
    source = _unquoted(given[-1].split("=", 1)[1]) if given else None
    if source in (None, "", "auto", "null"):
        return argv
    if "-m" in argv or "--multirun" in argv:
        raise RunDirectoryError("a sweep cannot resume one run; use trainer.resume=auto with a fixed hydra.sweep.dir")
    path = Path(source).expanduser().absolute()
    run_dir = path if path.is_dir() else path.parent.parent
    if not path.exists() or not (run_dir / ".hydra" / "overrides.yaml").is_file():
        raise RunDirectoryError(f"trainer.resume={source} is not a gentrain run directory or one of its checkpoints "
                                f"(no {run_dir / '.hydra' / 'overrides.yaml'})")
    saved = [o for o in replayable_overrides(run_dir) if not o.startswith("trainer.resume=")]
    rest = [a for a in argv[1:] if not a.startswith("trainer.resume=")]
    here = [] if any(a.startswith("hydra.run.dir=") for a in argv) else [f"hydra.run.dir={quote_override(str(run_dir))}"]
    return [argv[0], *saved, *rest, f"trainer.resume={quote_override(str(path))}", *here]


def _rank_arguments(argv: list[str]) -> list[str]:
    """Under torchrun, only rank 0 writes the run's files and log; the others print warnings only."""
    parallel = distributed.context()
    if parallel.enabled and ("-m" in argv or "--multirun" in argv):
        raise GentrainError("sweeps (-m) cannot run under torchrun; launch each job with torchrun instead")
    if parallel.is_main:
        return argv
    return [*argv, "hydra/job_logging=disabled"]


@contextlib.contextmanager
def _hydra_raises() -> Iterator[None]:
    """Let Hydra's exceptions reach exit_statuses() instead of Hydra printing them and exiting with 1."""
    saved = {name: os.environ.get(name) for name in ("HYDRA_FULL_ERROR", USER_FULL_ERROR)}
    os.environ[USER_FULL_ERROR] = "1" if full_errors() else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("gentrain")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main() -> None:
    import hydra

    from gentrain import run_names
    from gentrain.composition import CONFIG_MODULE, register

    if sys.argv[1:2] in (["--version"], ["-V"]):
        print(f"gentrain {version()}")
        return
    with exit_statuses("gentrain"):
        run_names.set_launch_time(datetime.datetime.now())
        register()
        distributed.init_from_environment()
        try:
            sys.argv = _rank_arguments(_resume_arguments(sys.argv))
            with _hydra_raises(), run_names.fixed_for_this_command(sys.argv[1:]):
                hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")(_task)()
            if _failure:
                raise _failure.pop()
        finally:
            distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
