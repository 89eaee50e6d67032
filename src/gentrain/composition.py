"""Composing a config and turning it into a model and data: the one home that the `gentrain` command,
gentrain-sample / gentrain-eval, the Python API, the tests and scripts/ share.

- `register()`: every schema in Hydra's ConfigStore (model and dataset schemas under `schema_model_<name>` /
  `schema_dataset_<name>`, names outside the config groups so that `gentrain --help` lists only what a user
  can pick) and the config resolvers. Torch-free: `gentrain --help` and config errors stay fast.
- `compose(overrides)`: the config `gentrain <overrides>` would compose, in this process;
- `to_config(cfg)`: DictConfig -> typed dataclasses, with every value checked against its rule (config.py),
  before any data is read;
- `check_choices(cfg, choices)`: the model and dataset the user typed are the ones the config describes;
- `build_model`, `load_dataset`, `identity`: a model from its options and the data's shape, the data, and what
  a checkpoint records to be recognised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import MissingMandatoryValue

from gentrain import registry
from gentrain.config import Config, problems
from gentrain.errors import ConfigError, DataError

CONFIG_MODULE = "gentrain.configs"


def register() -> None:
    """Store every schema in Hydra's ConfigStore and register the resolvers the YAML files use
    (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from gentrain.run_names import job_dirname, launch_time, name_suffix
    from gentrain.sweeps import optuna_storage, optuna_trials_left

    store = ConfigStore.instance()
    store.store(name="gentrain_config", node=Config)
    for kind in ("model", "dataset"):
        for name, config_class in registry.configs(kind).items():
            store.store(name=f"schema_{kind}_{name}", node=config_class)
    resolvers = {"launch_time": launch_time, "name_suffix": name_suffix, "job_dirname": job_dirname,
                 "optuna_storage": optuna_storage, "optuna_trials_left": optuna_trials_left}
    for name, resolver in {**resolvers, **registry.RESOLVERS}.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)
    _register_plugins()


def _register_plugins() -> None:
    """hydra/launcher=slurm's and hydra/sweeper=optuna_study's classes (gentrain/slurm.py,
    optuna_sweeper.py), those whose Hydra plugin is installed (the cluster extra). Hydra's own scan of the
    hydra_plugins package misses them in an editable install (setuptools' import hook lists no folders)."""
    from hydra.core.plugins import Plugins

    try:
        import hydra_plugins.gentrain_launcher as plugins
    except ImportError:  # a broken cluster extra: Hydra says so when a config names a plugin
        return
    for name in ("SlurmLauncher", "OptunaStudySweeper"):
        if hasattr(plugins, name):
            Plugins.instance().register(getattr(plugins, name))


def compose(overrides: Sequence[str] = (), *, with_hydra: bool = False) -> DictConfig:
    """The config `gentrain <overrides>` would compose, checked to describe the model and dataset the
    overrides chose; without Hydra's own settings (the `hydra` node) unless `with_hydra`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    check_choices(cfg, cfg.hydra.runtime.choices)
    if not with_hydra:
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
    return cfg


def check_choices(cfg: DictConfig, choices: Mapping[str, Any]) -> None:
    """The name the user typed is the name that is built: `model=lsgan` must compose the config class named
    'lsgan', not (through a YAML that reuses another schema) DCGAN's."""
    for kind in ("model", "dataset"):
        chosen, config_class = choices.get(kind), OmegaConf.get_type(cfg, kind)
        if chosen is None or config_class is None:
            continue
        if registry.configs(kind).get(chosen) is not config_class:
            try:
                owner = f"{kind} '{registry.name_of(config_class)}'"
            except registry.RegistryError:
                owner = config_class.__qualname__
            raise ConfigError(f"{kind}={chosen} composes the options of {owner} "
                              f"(configs/{kind}/{chosen}.yaml must use /schema_{kind}_{chosen}, "
                              f"the options named '{chosen}')")


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


def build_model(options: Any, data: Any) -> Any:
    """The GenerativeModel that `options` (a model config instance) name, for data of shape `data`
    (a DataInfo)."""
    return registry.implementation(options)(options, data)


def load_dataset(options: Any) -> Any:
    """The ImageDataset that `options` (a dataset config instance) describe, binarized as asked."""
    from gentrain.data.base import apply_binarization, place
    from gentrain.data.images import cache_dir_for
    from gentrain.data.schemas import resolve_root

    loader = registry.implementation(options)
    root = resolve_root(getattr(options, "root", None))
    dataset = apply_binarization(loader(options, root), options.binarize, options.split_seed)
    data_dir = Path(options.path).expanduser().absolute() if getattr(options, "path", None) else root
    dataset = place(dataset, options.in_memory.lower(),
                    cache_dir_for(data_dir) if data_dir.is_dir() else root)
    if dataset.info != options.data_info():
        raise DataError(f"the data changed while it was read: expected {options.data_info()}, "
                        f"loaded {dataset.info}")
    return dataset


def identity(model_options: Any, model_config: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """What a checkpoint records to be recognised (checkpoint.check_identity): the model's name, its options
    as plain values, and the data's shape."""
    shape = dict(data.__dict__) | ({"domains": data.domains} if data.domains != 1 else {})  # 2: unpaired data
    return {"model": registry.name_of(model_options), "model_config": dict(model_config), "data": shape}
