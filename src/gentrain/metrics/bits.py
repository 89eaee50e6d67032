"""Bits per dimension: the negative log-likelihood of the discrete data in nats, divided by D ln 2."""

from __future__ import annotations

import math

from torch import Tensor

LN2 = math.log(2.0)


def bits_per_dim(nll_nats: Tensor, num_dims: int) -> Tensor:
    """NLL in nats per image -> bits per sub-pixel, with D = C * H * W dimensions per image."""
    return nll_nats / (num_dims * LN2)
