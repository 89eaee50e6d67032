"""Composing a config and turning it into checked settings: the one home that the `gentrain` command,
gentrain-sample / gentrain-eval, the tests and scripts/ share.

- `register()`: every schema in Hydra's ConfigStore (model and dataset schemas under `schema_model_<name>` /
  `schema_dataset_<name>`, names outside the config groups so that `gentrain --help` lists only what a user
  can pick) and the config resolvers;
- `compose(overrides)`: the config `gentrain <overrides>` would compose, in this process;
- `to_config(cfg)`: DictConfig -> typed dataclasses, with every value checked against its rule (config.py),
  before any data is read.
"""

from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from gentrain.config import Config, problems
from gentrain.errors import ConfigError

CONFIG_MODULE = "gentrain.configs"


def register() -> None:
    """Store every schema in Hydra's ConfigStore and register the resolvers the YAML files use (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from gentrain.data import DATASETS
    from gentrain.models import CONFIG_RESOLVERS, MODELS
    from gentrain.run_names import job_dirname, launch_time, name_suffix

    resolvers = {"launch_time": launch_time, "name_suffix": name_suffix, "job_dirname": job_dirname}
    for name, resolver in {**resolvers, **CONFIG_RESOLVERS}.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)
    store = ConfigStore.instance()
    store.store(name="gentrain_config", node=Config)
    for name, model_class in MODELS.items():
        store.store(name=f"schema_model_{name}", node=model_class.config_class)
    for name, dataset in DATASETS.items():
        store.store(name=f"schema_dataset_{name}", node=dataset.config_class)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `gentrain <overrides>` would compose (without Hydra's own settings)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def to_config(cfg: DictConfig) -> Config:
    """The composed DictConfig -> typed dataclasses (enums as Enum members), every value checked.

    Raises ConfigError naming the first value that cannot work, e.g. 'trainer.batch_size must be between 1 and
    65536, got 0'."""
    try:
        config = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = err.full_key
        raise ConfigError(f"{key} is required: add {key}=... to the command line") from None
    found = next(problems(config), None)
    if found is not None:
        raise ConfigError(found)
    return config
