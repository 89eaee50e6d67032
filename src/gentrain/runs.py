"""A finished (or running) run directory: its saved config and checkpoints, and the model rebuilt from them.

Used by gentrain-sample and gentrain-eval. Everything is found relative to the run directory, so a run copied
to another machine works; only the data location may need `dataset.root=...` there. The run directory is read
as data (rundir.py): its YAML files through a loader that refuses tags, its checkpoints with weights_only=True,
and nothing it names is instantiated.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from gentrain import registry
from gentrain.checkpoint import CheckpointManager, check_identity, load_checkpoint
from gentrain.composition import build_model, identity, register, to_config
from gentrain.config import Config, problems
from gentrain.data.schemas import DataInfo, UnpairedDataInfo
from gentrain.ema import EMA
from gentrain.errors import CheckpointError, ConfigError, RunDirectoryError, exit_statuses, one_line
from gentrain.models.base import GenerativeModel
from gentrain.files import FileExists, existing, real_folder, remove_stale_temporaries
from gentrain.rundir import read_yaml, refuse_run_files, require_writable
from gentrain.runlock import process_alive
from gentrain.runtime import use_channels_last


def run_config(run_dir: Path, overrides: list[str]) -> tuple[DictConfig, Config]:
    """The run's saved config with `overrides` (key=value) applied, checked against the schemas."""
    register()
    config_file, hydra_file = run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "hydra.yaml"
    if not config_file.is_file() or not hydra_file.is_file():
        raise RunDirectoryError(f"{run_dir} is not a gentrain run directory (no .hydra/config.yaml)")
    saved, hydra = read_yaml(config_file), read_yaml(hydra_file)
    try:
        choices = hydra["hydra"]["runtime"]["choices"]
        model, dataset = choices["model"], choices["dataset"]
    except (TypeError, KeyError):
        raise RunDirectoryError(f"{hydra_file} does not say which model and dataset the run used") from None
    models, datasets = registry.configs("model"), registry.configs("dataset")
    if model not in models or dataset not in datasets:
        raise RunDirectoryError(f"{run_dir} was made with a model or dataset this gentrain does not know "
                                f"({model}, {dataset})")
    if not isinstance(saved, dict):
        raise RunDirectoryError(f"{config_file} is not a config")
    schema = OmegaConf.structured(Config)
    schema.model = OmegaConf.structured(models[model])
    schema.dataset = OmegaConf.structured(datasets[dataset])
    try:
        cfg = OmegaConf.merge(schema, OmegaConf.create(saved), OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{config_file} with {' '.join(overrides) or 'no overrides'}: {one_line(err)}") from None
    return cfg, to_config(cfg)


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """'best' (falling back to the latest when no best was marked), 'last', or a file (absolute or in the run)."""
    manager = CheckpointManager(run_dir / "checkpoints")
    if which in ("best", "last"):
        path = manager.directory / "best.pt" if which == "best" else None
        if path is None or not path.is_file():
            path = manager.latest()
        if path is None:
            raise RunDirectoryError(f"{run_dir} has no checkpoint (checkpoints/ is empty or missing)")
        return path
    path = Path(which).expanduser()
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
        raise RunDirectoryError(f"{run_dir} is not a directory")
    cfg, config = run_config(run_dir, overrides)
    path = find_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path, map_location=device)
    try:
        shape = dict(state["identity"]["data"])
        data = (UnpairedDataInfo if shape.pop("domains", 1) == 2 else DataInfo)(**shape)
    except TypeError as err:
        raise CheckpointError(f"{path} does not record the data's shape: {one_line(err)}") from None
    model_config = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
    check_identity(state, identity(config.model, model_config, data), path)
    try:
        model = build_model(config.model, data).to(device)
        if use_channels_last(config.trainer.channels_last, model, device):  # as the run trained and evaluated
            model.to(memory_format=torch.channels_last)
        model.load_state_dict(state["model"])
        ema = None
        if state.get("ema") is not None:
            ema = EMA(model.ema_module(), decay=config.trainer.ema_decay or 0.999)
            ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{path} does not fit the run's model: {one_line(err)}") from None
    model.eval()
    return LoadedRun(run_dir, cfg, config, model, ema, path, int(state["step"]), data)


def parse_arguments(argv: list[str], options_class: type) -> tuple[Any, list[str]]:
    """`key=value` arguments -> (the command's options, an instance of `options_class` whose fields carry rules
    like the config's, and config overrides such as model.iw_samples=1000). Values use OmegaConf's grammar
    (numbers, booleans, lists like [0,1]); a key that is neither an option nor a config path (model., dataset.,
    metrics., trainer.) is an error listing what is accepted."""
    names = [f.name for f in dataclasses.fields(options_class)]
    given, overrides = [], []
    for arg in argv:
        key, sep, _ = arg.partition("=")
        if not sep:
            raise ConfigError(f"arguments are key=value, got {arg!r}")
        if key in names:
            given.append(arg)
        elif key.split(".")[0] in ("model", "dataset", "metrics", "trainer"):
            overrides.append(arg)
        else:
            raise ConfigError(f"unknown option {key!r} (options: {', '.join(names)}; or a config value such as "
                              f"dataset.root=...)")
    try:
        options = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(options_class),
                                                      OmegaConf.from_dotlist(given)))
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key}=... is required") from None
    except OmegaConfBaseException as err:
        raise ConfigError(one_line(err)) from None
    found = next(problems(options), None)
    if found is not None:
        raise ConfigError(found)
    return options, overrides


def output_dir(chosen: Optional[str], default: Path, option: str = "out", *, run_dir: Path) -> Path:
    """Where a command writes: `out=` (or `option=`) when given, else `default` inside `run_dir`; refused before
    any work is done when it cannot be written (a read-only run directory: use out=), when the chosen folder is
    a run directory or its .hydra/ or checkpoints/, or when a folder inside the run on the way is a link.
    Temporaries that a killed command left there are removed."""
    folder = Path(os.path.abspath(Path(chosen).expanduser())) if chosen else default
    if chosen:
        refuse_run_files(folder, option)
    try:
        real_folder(folder, None if chosen else run_dir)
    except (RunDirectoryError, OSError) as err:
        raise RunDirectoryError(f"cannot write {folder} ({getattr(err, 'strerror', None) or err}): choose "
                                f"another folder with {option}=<folder>") from None
    require_writable(folder, f"choose another folder with {option}=<folder>")
    remove_stale_temporaries([folder], process_alive)
    return folder


def refuse_existing(paths: list[Path], overwrite: bool, what: str = "") -> None:
    """The rule of gentrain-sample and gentrain-eval for files they would write: an existing file is never
    replaced unless overwrite=true (one line names it, before any work)."""
    found = existing(paths)
    if found and not overwrite:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise FileExists(f"{found[0]}{more} already exist{'s' if len(found) == 1 else ''}{what}: pass "
                         f"overwrite=true to replace, or choose another name or folder")


def run_command(command: str, doc: str, options_class: type, action: Callable[[Any, list[str]], str],
                argv: Optional[list[str]] = None) -> None:
    """The body of gentrain-sample and gentrain-eval: parse `key=value` arguments, run `action(options,
    overrides)` and print what it returns, under the exit contract of errors.py (one line and exit 2 for a
    user error, 130 / 143 for Ctrl-C / SIGTERM)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(doc)
        return
    with exit_statuses(command):
        print(action(*parse_arguments(argv, options_class)))
