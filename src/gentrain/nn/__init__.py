"""Reusable network layers: causal convolutions for autoregressive models, invertible layers for flows."""

from gentrain.nn.flows import (
    ActNorm,
    Coupling,
    CouplingMask,
    CouplingNet,
    LogitTransform,
    checkerboard,
    squeeze,
    standard_normal_log_prob,
    unsqueeze,
)
from gentrain.nn.masked import (
    CausalConv2d,
    MaskType,
    VerticalConv,
    causal_mask,
    colour_groups,
    gated_activation,
    masked_square_conv,
    pixelwise,
    pointwise_conv,
    shift_down,
)

__all__ = [
    "ActNorm", "CausalConv2d", "Coupling", "CouplingMask", "CouplingNet", "LogitTransform", "MaskType",
    "VerticalConv", "causal_mask", "checkerboard", "colour_groups", "gated_activation", "masked_square_conv",
    "pixelwise", "pointwise_conv", "shift_down", "squeeze", "standard_normal_log_prob", "unsqueeze",
]
