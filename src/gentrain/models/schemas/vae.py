"""Options of the variational autoencoder (gentrain/models/vae.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from gentrain.config import SIZE_MAX, OptimizerConfig, setting
from gentrain.registry import model_config


class VAEArch(Enum):
    conv = "conv"
    mlp = "mlp"


class VAELikelihood(Enum):
    auto = "auto"  # bernoulli for binarized data, logistic for 8-bit data
    bernoulli = "bernoulli"
    logistic = "logistic"  # discretized logistic per sub-pixel
    categorical = "categorical"  # softmax over every pixel value


@model_config("vae")
@dataclass
class VAEConfig:
    arch: VAEArch = VAEArch.conv
    latent_dim: int = setting(32, min=1, max=SIZE_MAX)
    hidden: list[int] = setting(factory=lambda: [400], min_items=1, min=1, max=SIZE_MAX)  # mlp: hidden layer widths
    # conv: stem width, then one per downsampling
    channels: list[int] = setting(factory=lambda: [16, 32, 64], min_items=1, min=1, max=4096)
    likelihood: VAELikelihood = VAELikelihood.auto
    beta: float = setting(1.0, min=0)  # weight of the KL term (1 = the ELBO)
    kl_warmup_steps: int = setting(0, min=0)  # beta grows linearly from 0 over this many steps
    conditional: bool = False  # condition encoder and decoder on the class label
    # k of the importance-weighted bound computed on the test set at the end (<= 1: off)
    iw_samples: int = setting(100, min=0, max=100_000)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)

    # Keys that may differ between a checkpoint and the run that loads it (they do not change what the weights
    # mean), and the keys that set what the end-of-run evaluation costs (trainer=debug shrinks them).
    mutable: ClassVar[frozenset[str]] = frozenset({"beta", "kl_warmup_steps", "iw_samples"})
    evaluation_budget: ClassVar[frozenset[str]] = frozenset({"iw_samples"})
