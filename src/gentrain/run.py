"""One run, from its composed config to its finished directory: what `gentrain` does for each job, and what the
Python API's `gentrain.train` does in a notebook.

`run_in_directory` locks the run directory, checks and builds everything (`train`), commits the directory (its
.hydra/ files and train.log) only once every check has passed, trains, and records how the run ended in
status.json. `train` builds in order of cost: values, the model against the shape the data will have, the
checkpoint to resume from, then the data itself.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from gentrain import distributed
from gentrain.errors import Preempted, RunDirectoryError, Stopped, is_user_error, one_line
from gentrain.rundir import LOG_FORMAT, foreign_files

log = logging.getLogger("gentrain")


def run_files(task_cfg: Any, hydra_cfg: Any) -> dict[str, str]:
    """What Hydra writes into .hydra/ (it is told not to: the run writes them at commit, rundir.py)."""
    from omegaconf import OmegaConf

    return {
        ".hydra/config.yaml": OmegaConf.to_yaml(task_cfg),
        ".hydra/hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
        ".hydra/overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task))),
    }


def continues_itself(resume: Any, run_dir: Path) -> bool:
    """Whether trainer.resume continues the run that `run_dir` holds ('auto', the directory or one of its files):
    anything else started there would overwrite its best checkpoint and metrics and mix its checkpoints."""
    if resume == "auto":
        return True
    if not resume:
        return False
    source, home = Path(resume).expanduser().resolve(), run_dir.resolve()
    return source == home or home in source.parents


def enter_free_directory(stack: contextlib.ExitStack, run_dir: Path, *, may_move: bool, **options: Any) -> Any:
    """Lock `run_dir` (rundir.RunDirectory) and return it. A directory named by the launch time (`may_move`) that
    another run already uses or holds, because two commands started in the same second, gives way to the first
    free `<dir>_2`, `<dir>_3`, ...: taking the lock is what claims one, so racing commands never share it."""
    from gentrain.rundir import RunDirectory

    for attempt in range(1, 1000 if may_move else 2):
        path = run_dir if attempt == 1 else run_dir.with_name(f"{run_dir.name}_{attempt}")
        run = RunDirectory(path, **options)
        try:
            run.__enter__()
        except RunDirectoryError:
            if may_move and path.is_dir():  # in use by another process
                continue
            raise
        if may_move and run.had_run:
            run.__exit__(None, None, None)
            continue
        stack.push(run)
        if path != run_dir:
            log.info("%s is taken by another run: this run is in %s", run_dir, path)
        return run
    raise RunDirectoryError(f"{run_dir} and the next 998 directories beside it are taken: choose hydra.run.dir=...")


def run_in_directory(cfg: Any, run_dir: Path, hydra_cfg: Any, *, job: Any = None, sweep: bool = False,
                     parallel_jobs: int = 1, log_format: str = LOG_FORMAT) -> dict[str, Any]:
    """Train the composed config `cfg` in `run_dir` (see the module docstring) and return its final metrics.

    `hydra_cfg` is the run's Hydra config (its overrides, choices and what .hydra/ holds). What stops the run is
    raised, after status.json recorded it in a directory this run committed; in a `sweep`, a fresh job directory
    is committed for that too, so that the sweep summary lists the failure. A single run whose directory is named
    by the launch time moves beside it when another run got there first (enter_free_directory).
    """
    from omegaconf import open_dict, read_write

    from gentrain.composition import check_choices
    from gentrain.run_names import named_by_launch_time

    overrides = list(hydra_cfg.overrides.task)
    status = {"job": job, "overrides": overrides}
    started = time.monotonic()
    writer = distributed.context().is_main
    may_move = writer and not sweep and not distributed.context().enabled and named_by_launch_time(hydra_cfg.run)
    run: Any = None

    def ended(outcome: str, **extra: Any) -> None:
        if run is not None:
            run.record(outcome, **status, wall_seconds=round(time.monotonic() - started, 1), **extra)

    def remove_if_refused() -> None:
        """A run refused before it wrote anything leaves no empty directory of gentrain's naming behind."""
        if run is not None and not run.committed and may_move:
            with contextlib.suppress(OSError):
                run.path.rmdir()  # only when empty

    with contextlib.ExitStack() as stack:
        stack.callback(remove_if_refused)  # runs after the directory's lock is released
        try:
            run = enter_free_directory(stack, run_dir, may_move=may_move, writer=writer, log_format=log_format)
            if run.path != run_dir:  # .hydra/hydra.yaml says where the run is
                hydra_cfg = copy.deepcopy(hydra_cfg)
                with read_write(hydra_cfg), open_dict(hydra_cfg):
                    hydra_cfg.run.dir = hydra_cfg.runtime.output_dir = str(run.path)
            if run.writer and run.had_run and not continues_itself(cfg.trainer.resume, run.path):
                raise RunDirectoryError(f"{run.path} already holds a run: continue it with trainer.resume=auto, "
                                        f"or train in another directory (hydra.run.dir=...)")
            if run.writer and not run.had_run and foreign_files(run.path):
                raise RunDirectoryError(f"{run.path} already has {', '.join(foreign_files(run.path))}, not from a "
                                        f"gentrain run: gentrain never replaces them; train in an empty or new "
                                        f"directory (hydra.run.dir=...)")
            log.info("overrides: %s", " ".join(overrides) or "none (the defaults)")
            check_choices(cfg, hydra_cfg.runtime.choices)
            result = train(cfg, run.path, before_training=lambda: run.commit(run_files(cfg, hydra_cfg)),
                           parallel_jobs=parallel_jobs, overrides=overrides)
        except Stopped as err:
            ended("preempted" if isinstance(err, Preempted) else "interrupted", error=str(err))
            log.warning("%s", err, extra={"console": False})
            raise
        except Exception as err:
            if sweep and run is not None and not run.committed and not run.had_run \
                    and not isinstance(err, RunDirectoryError):
                run.commit(run_files(cfg, hydra_cfg))  # never into a directory another process uses
            ended("failed", error=one_line(err))
            if is_user_error(err):  # a single run prints it on stderr (errors.exit_statuses); a sweep job logs it
                log.error("%s%s", "job failed: " if sweep else "", one_line(err), extra={"console": sweep})
            raise
        ended("finished", main_metric=result["main_metric"], val=result["val"], test=result["test"])
    log.info("run directory: %s", run.path)
    return result


def train(cfg: Any, run_dir: Path, *, before_training: Callable[[], None] = lambda: None,
          parallel_jobs: int = 1, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Build everything a config describes, train it in `run_dir`, and return the final metrics.

    Every check comes first, in order of cost: values, then the model against the shape the data will have,
    then the checkpoint to resume from, then the data itself. `before_training` runs once they all passed.
    `parallel_jobs`: jobs of a sweep running at once on this machine (they share its cores); `overrides`: the
    command line's, shown in TensorBoard's HPARAMS tab.
    """
    from omegaconf import OmegaConf

    from gentrain.composition import build_model, identity, load_dataset, to_config

    config = to_config(cfg)  # before anything heavy is imported: a bad value costs a fraction of a second

    from gentrain.checkpoint import check_identity, load_checkpoint, resume_source
    from gentrain.data.schemas import resolve_root
    from gentrain.logger import run_hparams
    from gentrain.metrics.quality_setup import build_sample_quality
    from gentrain.runtime import check_precision, configure_threads, local_processes, pick_device, seed_everything
    from gentrain.trainer import Trainer

    device = pick_device(config.trainer.device)
    check_precision(config.trainer.precision, device)
    configure_threads(config.trainer.num_threads, local_processes(parallel_jobs))
    parallel = distributed.context()
    if parallel.enabled:
        log.info("distributed: %s", parallel.describe())
    # Each process draws its own noise; model initialisation is rank 0's (DDP broadcasts it).
    seed_everything(config.seed + parallel.rank, config.trainer.deterministic)
    info = config.dataset.data_info()
    model = build_model(config.model, info)
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    recognised_by = identity(config.model, container["model"], info)
    resume_from = resume_source(config.trainer.resume, run_dir)
    state = None
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=device, for_training=True)
        check_identity(state, recognised_by, resume_from)
    elif config.trainer.resume == "auto":
        log.info("trainer.resume=auto: no checkpoint in %s yet, starting fresh", run_dir / "checkpoints")

    dataset = load_dataset(config.dataset)
    log.info("data: %s", dataset.describe())
    log.info("model: %s with %s parameters", model.name, f"{sum(p.numel() for p in model.parameters()):,}")
    # Before the trainer: missing Inception weights or an unusable metrics config stop the run here.
    # Under torchrun the main process alone scores samples.
    sample_metrics = build_sample_quality(
        config.metrics.fid, model=model, dataset=dataset, data_root=resolve_root(getattr(config.dataset, "root", None)),
        device=device, seed=config.seed, progress=config.trainer.progress_bar,
    ) if parallel.is_main else None
    trainer = Trainer(
        model, dataset, config.trainer, run_dir=run_dir, device=device, seed=config.seed,
        identity=recognised_by, hparams=run_hparams(container, list(overrides), model.name, dataset.name),
        sample_metrics=sample_metrics, config_text=OmegaConf.to_yaml(cfg),
    )
    if state is not None:
        trainer.load_state_dict(state, resume_from)
    before_training()
    return trainer.fit()
