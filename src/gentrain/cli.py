"""The `gentrain` command: compose the config with Hydra, build data, model and trainer, and fit.

Errors a user can fix (GentrainError) print one line and exit with status 2; set HYDRA_FULL_ERROR=1 for the
traceback. Config errors are Hydra's own messages, raised while composing. In a sweep (`-m`), a failing job
is recorded in its status.json and the other jobs still run; the sweep ends with a summary (callbacks.py).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from gentrain import distributed
from gentrain.config import Config, check_trainer_config, register_configs
from gentrain.errors import ConfigError, GentrainError, Preempted
from gentrain.logger import write_json

log = logging.getLogger("gentrain")

EXIT_USER_ERROR = 2


def to_schema(cfg: DictConfig) -> Config:
    """The composed DictConfig -> typed dataclasses (enums as Enum members)."""
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = err.full_key
        raise ConfigError(f"{key} is required: add {key}=... to the command line") from err


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Build everything a config describes, train it in `run_dir`, and return the final metrics."""
    from gentrain.data import load_dataset, resolve_root
    from gentrain.logger import flatten_config
    from gentrain.metrics.sample_quality import build_sample_quality
    from gentrain.models import build_model, model_name
    from gentrain.runtime import pick_device, seed_everything
    from gentrain.trainer import Trainer

    config = to_schema(cfg)
    check_trainer_config(config.trainer)
    device = pick_device(config.trainer.device)
    parallel = distributed.context()
    if parallel.enabled:
        log.info("distributed: rank %d of %d processes, %s backend", parallel.rank, parallel.world_size, parallel.backend)
    # Each process draws its own noise; model initialisation is rank 0's (DDP broadcasts it).
    seed_everything(config.seed + parallel.rank, config.trainer.deterministic)
    dataset = load_dataset(config.dataset)
    log.info("data: %s", dataset.describe())
    model = build_model(config.model, dataset.info)
    name = model_name(config.model)
    log.info("model: %s with %s parameters", name, f"{sum(p.numel() for p in model.parameters()):,}")
    # Before the trainer: missing Inception weights or an unusable metrics config stop the run here.
    # Under torchrun the main process alone scores samples.
    sample_metrics = build_sample_quality(
        config.metrics.fid, model=model, dataset=dataset, data_root=resolve_root(getattr(config.dataset, "root", None)),
        device=device, seed=config.seed, progress=config.trainer.progress_bar,
    ) if parallel.is_main else None
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    identity = {"model": name, "model_config": container["model"], "data": dataset.info.__dict__}
    trainer = Trainer(
        model, dataset, config.trainer, run_dir=run_dir, device=device, seed=config.seed,
        identity=identity, hparams=flatten_config(container), sample_metrics=sample_metrics,
    )
    return trainer.fit()


def _task(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    status = {"job": hydra_cfg.job.num if in_sweep else None, "overrides": list(hydra_cfg.overrides.task)}
    started = time.monotonic()
    is_main = distributed.context().is_main

    def record(outcome: str, **extra: Any) -> None:
        if is_main:
            write_json(run_dir / "status.json", {"status": outcome, **status,
                                                 "wall_seconds": round(time.monotonic() - started, 1), **extra})

    try:
        result = train(cfg, run_dir)
    except Preempted as err:
        log.warning("%s", err)
        record("preempted", error=str(err))
        raise SystemExit(err.exit_code) from None
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (in_sweep or isinstance(err, GentrainError)):
            raise  # a bug outside a sweep: Hydra prints the traceback
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if isinstance(err, GentrainError):
            log.error("%s", err)
        else:
            log.exception("job failed: %s", first_line)  # keep the traceback in the job's log
        if not in_sweep:
            raise SystemExit(EXIT_USER_ERROR) from None
        record("failed", error=first_line)
        return float("nan")  # the other jobs of the sweep still run
    record("finished", main_metric=result["main_metric"], val=result["val"], test=result["test"])
    log.info("run directory: %s", run_dir)
    return float(result["val"].get(result["main_metric"], float("nan")))


def _resume_arguments(argv: list[str]) -> list[str]:
    """`trainer.resume=<run dir or checkpoint>` continues that run in its own directory with its own config:
    the run's saved overrides come first, then those given now (which win), then its directory."""
    given = [a for a in argv if a.startswith("trainer.resume=")]
    source = given[-1].split("=", 1)[1] if given else None
    if source in (None, "", "auto", "null"):
        return argv
    path = Path(source).expanduser()
    run_dir = path if path.is_dir() else path.parent.parent
    saved_overrides = run_dir / ".hydra" / "overrides.yaml"
    if not saved_overrides.is_file():
        print(f"gentrain: error: trainer.resume={source} is not a gentrain run directory or checkpoint "
              f"(no {saved_overrides})", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    if "-m" in argv or "--multirun" in argv:
        print("gentrain: error: a sweep cannot resume one run; use trainer.resume=auto with a fixed hydra.sweep.dir",
              file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    saved = [o for o in OmegaConf.load(saved_overrides) if not str(o).startswith(("trainer.resume=", "hydra.run.dir="))]
    here = [] if any(a.startswith("hydra.run.dir=") for a in argv) else [f"hydra.run.dir={run_dir.absolute()}"]
    return [argv[0], *saved, *argv[1:], *here]


def _rank_arguments(argv: list[str]) -> list[str]:
    """Under torchrun, only rank 0 writes the run's .hydra/ files and log; the others print warnings only."""
    parallel = distributed.context()
    if parallel.enabled and ("-m" in argv or "--multirun" in argv):
        print("gentrain: error: sweeps (-m) cannot run under torchrun; launch each job with torchrun instead",
              file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    if parallel.is_main:
        return argv
    return [*argv, "hydra.output_subdir=null", "hydra/job_logging=disabled"]


def main() -> None:
    register_configs()
    distributed.init_from_environment()
    sys.argv = _rank_arguments(_resume_arguments(sys.argv))
    try:
        hydra.main(version_base="1.3", config_path="pkg://gentrain.configs", config_name="config")(_task)()
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
