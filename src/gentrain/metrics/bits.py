"""Bits per dimension: the negative log-likelihood of the discrete data in nats, divided by D ln 2."""

from __future__ import annotations

import math

from torch import Tensor

LN2 = math.log(2.0)


def bits_per_dim(nll_nats: Tensor, num_dims: int) -> Tensor:
    """NLL in nats per image -> bits per sub-pixel, with D = C * H * W dimensions per image."""
    return nll_nats / (num_dims * LN2)


def dequantized_nll_nats(log_density: Tensor, num_dims: int, levels: int) -> Tensor:
    """-log P(x) bound in nats from the log-density of u = (x + noise) / levels on the unit cube.

    The density of v = x + noise on [0, levels)^D is the density of u divided by levels^D, and
    P(x) = integral of that density over the unit cell of x >= exp(E log density) (Jensen).
    """
    return -log_density + num_dims * math.log(levels)
