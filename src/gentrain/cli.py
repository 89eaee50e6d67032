"""The `gentrain` command: compose the config with Hydra, build data, model and trainer, and fit.

Errors a user can fix (GentrainError) print one line and exit with status 2; set HYDRA_FULL_ERROR=1 for the
traceback. Config errors are Hydra's own messages, raised while composing.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from gentrain.config import Config, check_trainer_config, register_configs
from gentrain.errors import ConfigError, GentrainError

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
    seed_everything(config.seed, config.trainer.deterministic)
    dataset = load_dataset(config.dataset)
    log.info("data: %s", dataset.describe())
    model = build_model(config.model, dataset.info)
    name = model_name(config.model)
    log.info("model: %s with %s parameters", name, f"{sum(p.numel() for p in model.parameters()):,}")
    # Before the trainer: missing Inception weights or an unusable metrics config stop the run here.
    sample_metrics = build_sample_quality(
        config.metrics.fid, model=model, dataset=dataset, data_root=resolve_root(getattr(config.dataset, "root", None)),
        device=device, seed=config.seed, progress=config.trainer.progress_bar,
    )
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    identity = {"model": name, "model_config": container["model"], "data": dataset.info.__dict__}
    trainer = Trainer(
        model, dataset, config.trainer, run_dir=run_dir, device=device, seed=config.seed,
        identity=identity, hparams=flatten_config(container), sample_metrics=sample_metrics,
    )
    return trainer.fit()


def _task(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = train(cfg, run_dir)
    except GentrainError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", err)
        raise SystemExit(EXIT_USER_ERROR) from None
    log.info("run directory: %s", run_dir)
    return float(result["val"].get(result["main_metric"], float("nan")))


def main() -> None:
    register_configs()
    hydra.main(version_base="1.3", config_path="pkg://gentrain.configs", config_name="config")(_task)()


if __name__ == "__main__":
    sys.exit(main())
