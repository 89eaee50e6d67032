"""The model registry. Adding a model: write `<name>.py` with a config dataclass and a GenerativeModel
subclass, list it in MODELS, and add `configs/model/<name>.yaml`."""

from __future__ import annotations

from gentrain.data.base import DataInfo
from gentrain.models.base import GenerativeModel, LossOutput, OptimizerSpec, Update
from gentrain.models.gan import DCGAN
from gentrain.models.gated_pixelcnn import GatedPixelCNN
from gentrain.models.pixelcnn import PixelCNN
from gentrain.models.realnvp import RealNVP
from gentrain.models.vae import VAE
from gentrain.models.wgan import WGAN, paper_setting

MODELS: dict[str, type[GenerativeModel]] = {
    "vae": VAE,
    "pixelcnn": PixelCNN,
    "gated_pixelcnn": GatedPixelCNN,
    "realnvp": RealNVP,
    "dcgan": DCGAN,
    "wgan": WGAN,
}

# Config resolvers that model YAMLs use (registered with OmegaConf by gentrain.config.register_configs).
CONFIG_RESOLVERS = {
    "wgan_paper": paper_setting,  # configs/model/wgan.yaml: paper defaults that follow model.lipschitz
}


def model_name(cfg: object) -> str:
    """The registry name of the model a config (a schema instance) describes."""
    return next(name for name, cls in MODELS.items() if type(cfg) is cls.config_class)


def build_model(cfg: object, data: DataInfo) -> GenerativeModel:
    return MODELS[model_name(cfg)](cfg, data)


__all__ = ["CONFIG_RESOLVERS", "MODELS", "GenerativeModel", "LossOutput", "OptimizerSpec", "Update", "build_model", "model_name"]
