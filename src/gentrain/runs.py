"""A finished (or running) run directory: its saved config and checkpoints, and the model rebuilt from them.

Used by gentrain-sample and gentrain-eval. Everything is found relative to the run directory, so a run copied
to another machine works; only the data location may need `dataset.root=...` there.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gentrain.checkpoint import CheckpointManager, check_identity, load_checkpoint
from gentrain.config import Config, register_configs
from gentrain.data import DATASETS
from gentrain.data.base import DataInfo
from gentrain.ema import EMA
from gentrain.errors import CheckpointError, ConfigError, GentrainError
from gentrain.models import MODELS, GenerativeModel, build_model


class NotARunError(GentrainError):
    """The directory is not a gentrain run."""


def run_config(run_dir: Path, overrides: list[str]) -> tuple[DictConfig, Config]:
    """The run's saved config with `overrides` (key=value) applied, checked against the schemas."""
    register_configs()
    config_file, hydra_file = run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "hydra.yaml"
    if not config_file.is_file() or not hydra_file.is_file():
        raise NotARunError(f"{run_dir} is not a gentrain run directory (no .hydra/config.yaml)")
    choices = OmegaConf.load(hydra_file).hydra.runtime.choices
    if choices.get("model") not in MODELS or choices.get("dataset") not in DATASETS:
        raise NotARunError(f"{run_dir} was made with a model or dataset this gentrain does not know "
                           f"({choices.get('model')}, {choices.get('dataset')})")
    schema = OmegaConf.structured(Config)
    schema.model = OmegaConf.structured(MODELS[choices.model].config_class)
    schema.dataset = OmegaConf.structured(DATASETS[choices.dataset].config_class)
    try:
        cfg = OmegaConf.merge(schema, OmegaConf.load(config_file), OmegaConf.from_dotlist(overrides))
        return cfg, OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from err


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """'best' (falling back to the latest when no best was marked), 'last', or a file (absolute or in the run)."""
    manager = CheckpointManager(run_dir / "checkpoints", keep=1)
    if which in ("best", "last"):
        path = manager.directory / "best.pt" if which == "best" else None
        if path is None or not path.is_file():
            path = manager.latest()
        if path is None:
            raise NotARunError(f"{run_dir} has no checkpoint (checkpoints/ is empty or missing)")
        return path
    path = Path(which)
    path = path if path.is_absolute() else run_dir / path
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: DictConfig
    config: Config
    model: GenerativeModel  # in eval mode, on `device`
    ema: Optional[EMA]  # the averaged weights, applied by Evaluator.eval_mode
    checkpoint: Path
    step: int
    data: DataInfo


def load_run(run_dir: Path, *, checkpoint: str, overrides: list[str], device: torch.device) -> LoadedRun:
    """Rebuild the run's model from its config and load a checkpoint, refusing one that does not match."""
    run_dir = run_dir.expanduser().absolute()
    if not run_dir.is_dir():
        raise NotARunError(f"{run_dir} is not a directory")
    cfg, config = run_config(run_dir, overrides)
    path = find_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path, map_location=device)
    name = next(n for n, cls in MODELS.items() if type(config.model) is cls.config_class)
    model_config = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
    check_identity(state, {"model": name, "model_config": model_config}, path, MODELS[name].mutable_settings)
    data = DataInfo(**state["identity"]["data"])
    model = build_model(config.model, data).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit the run's model: {str(err).splitlines()[0]}") from err
    ema = None
    if state.get("ema") is not None:
        ema = EMA(model.ema_module(), decay=config.trainer.ema_decay or 0.999)
        ema.load_state_dict(state["ema"])
    model.eval()
    return LoadedRun(run_dir, cfg, config, model, ema, path, int(state["step"]), data)


def parse_arguments(argv: list[str], options: dict[str, object], command: str) -> tuple[dict[str, object], list[str]]:
    """`key=value` arguments -> (command options, config overrides such as model.iw_samples=1000).

    Options are parsed with OmegaConf's grammar (numbers, booleans, lists like [0,1]); a key that is neither an
    option nor a config path (model., dataset., metrics., trainer.) is an error listing what is accepted.
    """
    values = dict(options)
    overrides = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"{command}: arguments are key=value, got {arg!r}")
        if key in values:
            parsed = OmegaConf.from_dotlist([f"x={value}"]).x if value != "" else None
            values[key] = OmegaConf.to_container(parsed) if OmegaConf.is_config(parsed) else parsed
        elif key.split(".")[0] in ("model", "dataset", "metrics", "trainer"):
            overrides.append(arg)
        else:
            accepted = ", ".join(sorted(values))
            raise ConfigError(f"{command}: unknown option {key!r} (options: {accepted}; or a config value such as "
                              f"dataset.root=...)")
    if not values.get("run"):
        raise ConfigError(f"{command}: run=<run directory> is required")
    return values, overrides


def run_command(command: str, doc: str, options: dict[str, object], action: Callable[[dict, list[str]], str],
                argv: Optional[list[str]] = None) -> None:
    """The body of gentrain-sample and gentrain-eval: parse `key=value` arguments, run `action(options,
    overrides)` and print what it returns; a user error prints one line and exits with status 2 (the traceback
    only with HYDRA_FULL_ERROR=1, as for `gentrain`)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(doc)
        return
    try:
        print(action(*parse_arguments(argv, options, command)))
    except GentrainError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
