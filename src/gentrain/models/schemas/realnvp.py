"""Options of RealNVP and NICE (gentrain/models/realnvp.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from gentrain.config import OptimizerConfig, setting
from gentrain.registry import model_config


class CouplingType(Enum):
    affine = "affine"  # RealNVP: y = x * exp(s) + t
    additive = "additive"  # NICE: y = x + t, volume preserving


@model_config("realnvp")
@dataclass
class RealNVPConfig:
    num_scales: int = setting(2, min=1, max=8)  # 2 = squeeze once; sides must be divisible by 2^(num_scales - 1)
    coupling: CouplingType = CouplingType.affine
    hidden_channels: int = setting(64, min=1, max=4096)  # feature maps of each coupling's ResNet
    residual_blocks: int = setting(4, min=0, max=100)  # residual blocks in each coupling's ResNet
    # y = logit(alpha + (1 - 2 alpha) u); the paper's 0.05 for natural images
    logit_alpha: float = setting(0.05, above=0, below=0.5)
    temperature: float = setting(1.0, above=0)  # standard deviation of the latents for sample grids
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)

    mutable: ClassVar[frozenset[str]] = frozenset({"temperature"})  # only the sample grid uses it
