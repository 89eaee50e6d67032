"""Data whose flow-matching velocity field and likelihood are known in closed form, for exact checks.

The data are x1 ~ N(mu, R diag(s^2) R^T) (R orthogonal), the noise x0 ~ N(0, I), and the conditional optimal-
transport path of flow matching x_t = (1 - (1 - sigma_min) t) x0 + t x1 (noise at t = 0, data at t = 1). In
R's basis every coordinate is an independent Gaussian path with variance m_t^2 = sigma_t^2 + t^2 s^2,
sigma_t = 1 - (1 - sigma_min) t, and the optimal (marginal) velocity E[x1 - (1 - sigma_min) x0 | x_t = x] is
    v(x, t) = mu + R diag((t s^2 - (1 - sigma_min) sigma_t) / m_t^2) R^T (x - t mu),
whose flow carries N(0, I) to the data convolved with N(0, sigma_min^2 I) at t = 1.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn


class GaussianData:
    def __init__(self, mu: Tensor, s: Tensor, rotation: Optional[Tensor] = None, sigma_min: float = 0.0):
        self.mu, self.s, self.sigma_min = mu, s, sigma_min
        self.rotation = torch.eye(len(mu), dtype=mu.dtype) if rotation is None else rotation

    @staticmethod
    def random(dims: int, *, seed: int = 0, scale: float = 1.0, rotate: bool = True, sigma_min: float = 0.0,
               dtype=torch.float64) -> "GaussianData":
        g = torch.Generator().manual_seed(seed)
        mu = scale * (torch.rand(dims, generator=g, dtype=dtype) - 0.5)
        s = scale * (0.2 + torch.rand(dims, generator=g, dtype=dtype))
        rotation = torch.linalg.qr(torch.randn(dims, dims, generator=g, dtype=dtype))[0] if rotate else None
        return GaussianData(mu, s, rotation, sigma_min)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        flat, t = x.flatten(1).to(self.mu.dtype), t[:, None].to(self.mu.dtype)
        mu_w, w = self.mu @ self.rotation, flat @ self.rotation  # coordinates in the eigenbasis
        sigma_t = 1 - (1 - self.sigma_min) * t
        variance = sigma_t ** 2 + t ** 2 * self.s ** 2
        v_w = mu_w + (t * self.s ** 2 - (1 - self.sigma_min) * sigma_t) / variance * (w - t * mu_w)
        return (v_w @ self.rotation.T).view_as(x).to(x.dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """log-density at t = 1 (the data convolved with N(0, sigma_min^2 I)), (B,)."""
        w = (x.flatten(1).to(self.mu.dtype) - self.mu) @ self.rotation
        variance = self.s ** 2 + self.sigma_min ** 2
        return -0.5 * (w ** 2 / variance + torch.log(2 * math.pi * variance)).sum(1)

    def covariance(self) -> Tensor:
        return self.rotation @ torch.diag(self.s ** 2 + self.sigma_min ** 2) @ self.rotation.T

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        w = torch.randn(n, len(self.mu), generator=generator, dtype=self.mu.dtype) * self.s
        return self.mu + w @ self.rotation.T


class AnalyticVelocity(nn.Module):
    """The optimal velocity as a network (forward(x, t, labels), t on the network's time scale), to stand in
    for a model's U-Net."""

    def __init__(self, data: GaussianData, time_scale: float = 1.0):
        super().__init__()
        self.data, self.time_scale = data, time_scale
        self.unused = nn.Parameter(torch.zeros(()))  # models find their device from a parameter

    def forward(self, x: Tensor, t: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        return self.data.velocity(x, t / self.time_scale)
