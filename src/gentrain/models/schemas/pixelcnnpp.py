"""Options of PixelCNN++ (gentrain/models/pixelcnnpp.py)."""

from __future__ import annotations

from dataclasses import dataclass

from gentrain.config import setting
from gentrain.models.schemas.autoregressive import PixelOutputConfig
from gentrain.registry import model_config


@model_config("pixelcnnpp")
@dataclass
class PixelCNNPPConfig(PixelOutputConfig):
    """Two shifted streams (down and down-right) of gated residual blocks over three resolutions (the
    image's, its half and its quarter: the sides must be multiples of 4), a first pass down to the quarter
    and a second back up, with a skip from every block of the first into the second. The output is the
    discretized logistic mixture over whole pixels (model.output=auto); a per-sub-pixel output (softmax,
    bernoulli) needs the earlier colours of the current pixel, which the streams never see, so it is for
    one-channel images only. model.conditional adds a learned per-class bias to every gated residual block.
    The defaults are a small network for CPUs; experiment=pixelcnnpp_cifar10 has the paper's."""

    num_filters: int = setting(32, min=1, max=4096)  # both streams' channels at every resolution (paper: 160)
    num_blocks: int = setting(2, min=1, max=100)  # gated residual blocks per resolution and stream (paper: 5)
    dropout: float = setting(0.5, min=0.0, below=1.0)  # training only: inside every gated residual block
