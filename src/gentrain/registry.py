"""The names users type (`model=vae`, `dataset=mnist`) and what they mean, each written once.

A model or dataset is named on its config class, where its options are defined:

    @model_config("vae")
    @dataclass
    class VAEConfig: ...

and its implementation attaches itself to that class: `class VAE(GenerativeModel, config=VAEConfig)` for a model,
`@loads(MNISTConfig)` on a dataset's loader. So a config class belongs to exactly one name and one
implementation; a second name for a class, a second class for a name, or a second implementation for a class is
an error when the module is imported (a new model that wants another's options subclasses its config class).

Config classes of the built-in models live in torch-free modules (gentrain/models/schemas/, gentrain/data/
schemas.py), so that composing a config (`gentrain --help`, `--cfg job`, a misspelt key) never imports torch. A
model can also be a single file holding its config class and its model: `configs/model/<name>.yaml` without a
known config class makes gentrain import the modules of gentrain.models to find it.

This module imports nothing from gentrain at import time.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib import resources
from typing import Any, Callable, Optional

_CONFIGS: dict[str, dict[str, type]] = {"model": {}, "dataset": {}}  # kind -> name -> config class
_NAMES: dict[type, tuple[str, str]] = {}  # config class -> (kind, name)
_IMPLEMENTATIONS: dict[type, Any] = {}  # config class -> model class or dataset loader
RESOLVERS: dict[str, Callable[..., Any]] = {}  # config resolvers that YAML files use, by name

SCHEMA_MODULES = {"model": "gentrain.models.schemas", "dataset": "gentrain.data.schemas"}
IMPLEMENTATION_PACKAGES = {"model": "gentrain.models", "dataset": "gentrain.data"}


class RegistryError(Exception):
    """A name or config class given twice: a programming error, raised when the module is imported."""


def _named(kind: str, name: str, resolvers: Optional[dict[str, Callable[..., Any]]]) -> Callable[[type], type]:
    def register(config_class: type) -> type:
        owner = _CONFIGS[kind].get(name)
        if owner is not None and owner is not config_class:
            raise RegistryError(f"{kind} name {name!r} is taken by {owner.__qualname__}; {config_class.__qualname__} "
                                f"needs another name")
        if config_class in _NAMES and _NAMES[config_class] != (kind, name):
            raise RegistryError(f"{config_class.__qualname__} already names {_NAMES[config_class][0]} "
                                f"{_NAMES[config_class][1]!r}: a new {kind} needs its own config class (subclass it)")
        for key, resolver in (resolvers or {}).items():
            if RESOLVERS.get(key, resolver) is not resolver:
                raise RegistryError(f"config resolver {key!r} is defined twice")
            RESOLVERS[key] = resolver
        _CONFIGS[kind][name] = config_class
        _NAMES[config_class] = (kind, name)
        return config_class

    return register


def model_config(name: str, *, resolvers: Optional[dict[str, Callable[..., Any]]] = None) -> Callable[[type], type]:
    """Class decorator: this dataclass holds the options of the model users select with `model=<name>`;
    `resolvers` are the config resolvers its YAML uses."""
    return _named("model", name, resolvers)


def dataset_config(name: str) -> Callable[[type], type]:
    """Class decorator: this dataclass holds the options of the dataset `dataset=<name>`."""
    return _named("dataset", name, None)


def implement(config_class: type, implementation: Any) -> None:
    """Attach a model class or a dataset loader to the config class that names it."""
    if config_class not in _NAMES:
        raise RegistryError(f"{config_class.__qualname__} has no name: decorate it with @model_config or "
                            f"@dataset_config")
    current = _IMPLEMENTATIONS.get(config_class)
    if current is not None and current is not implementation:
        kind, name = _NAMES[config_class]
        raise RegistryError(f"{config_class.__qualname__} (the options of {kind} {name!r}) is claimed by both "
                            f"{current.__name__} and {implementation.__name__}: each {kind} needs its own "
                            f"config class (subclass it)")
    _IMPLEMENTATIONS[config_class] = implementation


def loads(config_class: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a dataset's loader: `@loads(MNISTConfig) def load_mnist(cfg, root) -> ImageDataset`."""
    def attach(loader: Callable[..., Any]) -> Callable[..., Any]:
        implement(config_class, loader)
        return loader

    return attach


# --- finding them -------------------------------------------------------------------------------------------------
def _import_all(name: str) -> None:
    """Import a module, or every module of a package."""
    module = importlib.import_module(name)
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        importlib.import_module(f"{name}.{info.name}")


def _options_in_yaml(kind: str) -> set[str]:
    folder = resources.files("gentrain.configs") / kind
    return {entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def configs(kind: str) -> dict[str, type]:
    """name -> config class of every model (kind='model') or dataset (kind='dataset')."""
    _import_all(SCHEMA_MODULES[kind])
    if _options_in_yaml(kind) - set(_CONFIGS[kind]):  # a model written as one file: its config is beside it
        _import_all(IMPLEMENTATION_PACKAGES[kind])
    return dict(_CONFIGS[kind])


def name_of(config: Any) -> str:
    """The name of the model or dataset a config (an instance or its class) describes."""
    config_class = config if isinstance(config, type) else type(config)
    if config_class not in _NAMES:
        raise RegistryError(f"{config_class.__qualname__} is not the config of a named model or dataset")
    return _NAMES[config_class][1]


def implementation(config: Any) -> Any:
    """The model class or dataset loader of a config (imports the implementations, and so torch)."""
    config_class = config if isinstance(config, type) else type(config)
    if config_class not in _IMPLEMENTATIONS:
        _import_all(IMPLEMENTATION_PACKAGES[_NAMES[config_class][0]])
    if config_class not in _IMPLEMENTATIONS:
        raise RegistryError(f"no implementation for {config_class.__qualname__} ({name_of(config_class)!r})")
    return _IMPLEMENTATIONS[config_class]
