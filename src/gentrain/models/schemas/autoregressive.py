"""Options of the PixelCNN family (gentrain/models/pixelcnn.py, gated_pixelcnn.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from gentrain.config import OptimizerConfig, setting
from gentrain.registry import model_config


class PixelOutput(Enum):
    auto = "auto"  # bernoulli for binarized data, softmax for 8-bit data
    softmax = "softmax"  # a softmax over every pixel value per sub-pixel (the PixelCNN paper)
    logistic_mixture = "logistic_mixture"  # PixelCNN++'s discretized logistic mixture per pixel
    bernoulli = "bernoulli"  # one logit per sub-pixel; binarized data only


@dataclass
class AutoregressiveConfig:
    """Options shared by PixelCNN and Gated PixelCNN (each model sets its own defaults)."""

    hidden_channels: int = setting(64, min=1, max=4096)  # feature maps of every layer
    num_layers: int = setting(7, min=1, max=1000)  # layers after the first (mask A) one: residual or gated blocks
    first_kernel_size: int = setting(7, min=3, max=63, odd=True)  # the first layer's k x k receptive field
    kernel_size: int = setting(3, min=3, max=63, odd=True)  # the later layers' k x k receptive field
    head_channels: int = setting(256, min=1, max=8192)  # width of the two 1x1 output layers
    output: PixelOutput = PixelOutput.auto
    num_mixtures: int = setting(10, min=1, max=100)  # logistic_mixture: components per pixel
    conditional: bool = False  # a learned per-class bias in every layer
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)


@model_config("pixelcnn")
@dataclass
class PixelCNNConfig(AutoregressiveConfig):
    """hidden_channels is the residual stream's width (2h in the paper); each block narrows it to half."""


@model_config("gated_pixelcnn")
@dataclass
class GatedPixelCNNConfig(AutoregressiveConfig):
    """hidden_channels is each stack's width p (the gates compute 2p channels)."""
