"""Options of the autoregressive family: PixelCNN, Gated PixelCNN, PixelRNN (gentrain/models/pixelcnn.py,
gated_pixelcnn.py, pixelrnn.py) and MADE (made.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from gentrain.config import SIZE_MAX, OptimizerConfig, setting
from gentrain.registry import model_config


class PixelOutput(Enum):
    auto = "auto"  # bernoulli for binarized data; for 8-bit data softmax (MADE: logistic_mixture)
    softmax = "softmax"  # a softmax over every pixel value per sub-pixel (the PixelCNN paper)
    logistic_mixture = "logistic_mixture"  # PixelCNN++'s discretized logistic mixture per pixel
    bernoulli = "bernoulli"  # one logit per sub-pixel; binarized data only


@dataclass
class PixelOutputConfig:
    """What every autoregressive model shares: its output distribution, conditioning and optimizer."""

    output: PixelOutput = PixelOutput.auto
    num_mixtures: int = setting(10, min=1, max=100)  # logistic_mixture: components per pixel
    conditional: bool = False  # a learned per-class bias in every layer
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class AutoregressiveConfig(PixelOutputConfig):
    """Options shared by the convolutional and recurrent networks (each model sets its own defaults)."""

    hidden_channels: int = setting(64, min=1, max=4096)  # feature maps of every layer
    num_layers: int = setting(7, min=1, max=1000)  # layers after the first (mask A) one: residual or gated blocks
    first_kernel_size: int = setting(7, min=3, max=63, odd=True)  # the first layer's k x k receptive field
    kernel_size: int = setting(3, min=3, max=63, odd=True)  # the later layers' k x k receptive field
    head_channels: int = setting(256, min=1, max=8192)  # width of the two 1x1 output layers


@model_config("pixelcnn")
@dataclass
class PixelCNNConfig(AutoregressiveConfig):
    """hidden_channels is the residual stream's width (2h in the paper); each block narrows it to half."""


@model_config("gated_pixelcnn")
@dataclass
class GatedPixelCNNConfig(AutoregressiveConfig):
    """hidden_channels is each stack's width p (the gates compute 2p channels)."""


class RecurrentLayer(Enum):
    row_lstm = "row_lstm"  # rows top to bottom; sees a triangle above the pixel
    diagonal_bilstm = "diagonal_bilstm"  # diagonals, in both directions; sees every earlier pixel


@model_config("pixelrnn")
@dataclass
class PixelRNNConfig(AutoregressiveConfig):
    """hidden_channels is h, the units of every LSTM layer (the residual stream between layers has 2h);
    num_layers counts the LSTM layers; kernel_size is the Row LSTM's 1 x k input-to-state and state-to-state
    width (the Diagonal BiLSTM's are 1x1 and 2x1, as in the paper)."""

    hidden_channels: int = setting(16, min=1, max=4096)
    head_channels: int = setting(64, min=1, max=8192)
    layer: RecurrentLayer = RecurrentLayer.diagonal_bilstm


@model_config("made")
@dataclass
class MADEConfig(PixelOutputConfig):
    """A masked MLP over the flattened sub-pixels, in raster order with R -> G -> B inside a pixel."""

    hidden: list[int] = setting(factory=lambda: [500], min_items=1, min=1, max=SIZE_MAX)  # hidden layer widths
    # connectivity masks: training cycles through them, a step each; evaluation averages their probabilities
    num_masks: int = setting(1, min=1, max=1024)
    mask_seed: int = setting(0, min=0, max=2**31 - 1)  # draws the hidden units' degrees of every mask
    # Masked weights from every input straight to the outputs after it (the MADE code's direct_input_connect=
    # "Output", used for the paper's MNIST results): each output then reads its whole past, not only through
    # the few hidden units whose degree is close to its own
    direct_connections: bool = False
