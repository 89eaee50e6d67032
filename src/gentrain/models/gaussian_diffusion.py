"""The maths of discrete-time Gaussian diffusion (Ho et al. 2020; Nichol & Dhariwal 2021), apart from any
network.

Images are scaled to [-1, 1]: x0 = 2 k / (L - 1) - 1 for a pixel value k of L levels (L = 256 for 8-bit
data). The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), t = 1..T; arrays here are
indexed by i = t - 1. The variational bound on -log p(x_0) of the discrete image, in nats (Ho et al., eq. 5):

    L = L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                                    the prior term
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))              the diffusion terms
    L_0     = E_q -log p(x_0 | x_1), a Gaussian integrated over the bin of each pixel value (width
              2 / (L - 1), the outermost bins extended to -inf and +inf): the discretized decoder

`vlb_term(i)` is the term of step t = i + 1 (L_0 for i = 0, else L_i), so that the bound is the prior term
plus the sum of vlb_term over i = 0..T-1, or, unbiased with one network call, the prior term plus
T vlb_term(i) for i drawn uniformly.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from gentrain.models.schemas.ddpm import NoiseSchedule, Prediction, ReverseVariance

_LOG_2 = math.log(2.0)
_EDGE = 1e4  # the edge bins' outer bound, in standard deviations: Phi(1e4) == 1 in any float type, and finite


def linear_alpha_bar(timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Ho et al.'s betas linear from beta_start to beta_end, given for T = 1000 and scaled by 1000 / T so that
    other T keep the same overall noise (Nichol & Dhariwal's rule)."""
    scale = 1000.0 / timesteps
    # on the CPU always (also under `with torch.device("meta")`): a few numbers, moved once by `at`
    betas = torch.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=torch.float64, device="cpu")
    if betas.max() >= 1:
        raise ValueError(f"T={timesteps} scales the linear schedule's betas to {betas.max():.3g} >= 1: "
                         f"raise T")
    return torch.cumprod(1.0 - betas, 0)


def cosine_alpha_bar(timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's abar_t = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) pi / 2), with every
    beta_t = 1 - abar_t / abar_{t-1} clipped at 0.999 (near t = T, where abar_t reaches 0)."""
    t = torch.arange(timesteps + 1, dtype=torch.float64, device="cpu")
    f = torch.cos((t / timesteps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1.0 - betas, 0)


def alpha_bar_of(schedule: NoiseSchedule, timesteps: int, beta_start: float, beta_end: float,
                 cosine_offset: float) -> Tensor:
    if schedule is NoiseSchedule.linear:
        return linear_alpha_bar(timesteps, beta_start, beta_end)
    return cosine_alpha_bar(timesteps, cosine_offset)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012); each branch sees only its own inputs,
    so that neither's gradient can be inf where it is not used."""
    x = x.clamp(max=-1e-30)
    near = x > -_LOG_2
    return torch.where(near, torch.log(-torch.expm1(torch.where(near, x, -1.0))),
                       torch.log1p(-torch.exp(torch.where(near, -1.0, x))))


def log_normal_mass(upper: Tensor, lower: Tensor) -> Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, accurate in both tails: above 0 it uses the mirror
    image Phi(-lower) - Phi(-upper), so that the difference is never one of two numbers close to 1."""
    mirror = lower > 0
    hi = torch.where(mirror, -lower, upper)
    lo = torch.where(mirror, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + log1mexp(torch.special.log_ndtr(lo) - log_hi)


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor, levels: int) -> Tensor:
    """log P(x) per pixel of the pixel values x in [-1, 1] (L = `levels` values 2 / (L - 1) apart) under
    N(mean, exp(log_var)) integrated over each value's bin, the outermost bins reaching to -inf and +inf."""
    half = 1.0 / (levels - 1)
    inv_std = torch.exp(-0.5 * log_var)
    upper = torch.where(x > 1 - half, _EDGE, (x + half - mean) * inv_std)
    lower = torch.where(x < -1 + half, -_EDGE, (x - half - mean) * inv_std)
    return log_normal_mass(upper, lower)


def gaussian_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element."""
    return 0.5 * (log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2) - 1.0)


def per_image(values: Tensor) -> Tensor:
    return values.flatten(1).sum(1)


class GaussianDiffusion:
    """The schedule's arrays and the bound's terms for one chain of steps: the model's T steps, or a
    subsequence of them for faster sampling (`respaced`, Nichol & Dhariwal's section 4). `steps[i]` is the
    original step index (0..T-1) that the network is told at position i of this chain."""

    def __init__(self, alpha_bar: Tensor, prediction: Prediction, variance: ReverseVariance, levels: int,
                 steps: Optional[Tensor] = None):
        if len(alpha_bar) < 2:
            raise ValueError("a diffusion needs at least 2 steps")
        ab = alpha_bar.double()
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        beta = 1.0 - ab / ab_prev
        beta_tilde = beta * (1.0 - ab_prev) / (1.0 - ab)  # 0 at t = 1: x_0 is known given x_1 and x_0
        self.alpha_bar = alpha_bar.double()
        self.prediction, self.variance, self.levels = prediction, variance, levels
        self.steps = torch.arange(len(ab), device="cpu") if steps is None else steps
        self.arrays = {
            "sqrt_ab": ab.sqrt(), "sqrt_1m_ab": (1.0 - ab).sqrt(), "sqrt_ab_prev": ab_prev.sqrt(),
            "sqrt_1m_ab_prev": (1.0 - ab_prev).sqrt(),
            "log_beta": beta.log(),
            # beta~_1 = 0 would make log(0): the decoder's step takes beta~_2 (both papers' code)
            "log_beta_tilde": torch.cat([beta_tilde[1:2], beta_tilde[1:]]).log(),
            "coef_x0": ab_prev.sqrt() * beta / (1.0 - ab),  # the posterior mean of q(x_{t-1} | x_t, x_0)
            "coef_xt": (1.0 - beta).sqrt() * (1.0 - ab_prev) / (1.0 - ab),
        }
        self._on: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}

    @property
    def num_steps(self) -> int:
        return len(self.alpha_bar)

    def respaced(self, count: int) -> "GaussianDiffusion":
        """The chain through `count` of the steps, evenly spaced from the first to the last."""
        if count >= self.num_steps:
            return self
        keep = torch.linspace(0, self.num_steps - 1, count, dtype=torch.float64).round().long()
        return GaussianDiffusion(self.alpha_bar[keep], self.prediction, self.variance, self.levels,
                                 self.steps[keep])

    def at(self, name: str, i: Tensor, like: Tensor) -> Tensor:
        """The array `name` at positions i (B,), shaped to broadcast over images like `like` (B, C, H, W)."""
        key = (like.device, like.dtype)
        if key not in self._on:  # moved to the device once, never per step
            self._on[key] = {k: v.to(device=like.device, dtype=like.dtype) for k, v in self.arrays.items()}
        return self._on[key][name][i].view(-1, *([1] * (like.ndim - 1)))

    # --- the forward process and the network's parametrizations ---------------------------------------------
    def noisy(self, x0: Tensor, i: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        return self.at("sqrt_ab", i, x0) * x0 + self.at("sqrt_1m_ab", i, x0) * noise

    def target(self, x0: Tensor, noise: Tensor, i: Tensor) -> Tensor:
        """What the network regresses on: eps, x_0 or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans
        & Ho)."""
        if self.prediction is Prediction.eps:
            return noise
        if self.prediction is Prediction.x0:
            return x0
        return self.at("sqrt_ab", i, x0) * noise - self.at("sqrt_1m_ab", i, x0) * x0

    def x0_and_eps(self, prediction: Tensor, x_t: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
        """(x_0 estimate, eps estimate) from the network's prediction of eps, x_0 or v at x_t."""
        a, s = self.at("sqrt_ab", i, x_t), self.at("sqrt_1m_ab", i, x_t)
        if self.prediction is Prediction.eps:
            return (x_t - s * prediction) / a, prediction
        if self.prediction is Prediction.x0:
            return prediction, (x_t - a * prediction) / s
        return a * x_t - s * prediction, s * x_t + a * prediction

    def eps_from_x0(self, x0: Tensor, x_t: Tensor, i: Tensor) -> Tensor:
        return (x_t - self.at("sqrt_ab", i, x_t) * x0) / self.at("sqrt_1m_ab", i, x_t)

    # --- the reverse process --------------------------------------------------------------------------------
    def posterior_mean(self, x0: Tensor, x_t: Tensor, i: Tensor) -> Tensor:
        """The mean of q(x_{t-1} | x_t, x_0); the model's mean is the same with its estimate of x_0."""
        return self.at("coef_x0", i, x_t) * x0 + self.at("coef_xt", i, x_t) * x_t

    def reverse_log_var(self, i: Tensor, like: Tensor, fraction: Optional[Tensor]) -> Tensor:
        """log sigma_t^2 of p(x_{t-1} | x_t): beta_t (fixed_large), beta~_t (fixed_small), or the learned
        interpolation fraction log beta_t + (1 - fraction) log beta~_t (Nichol & Dhariwal, eq. 15)."""
        if self.variance is ReverseVariance.fixed_large:
            return self.at("log_beta", i, like).expand_as(like)
        if self.variance is ReverseVariance.fixed_small:
            return self.at("log_beta_tilde", i, like).expand_as(like)
        if fraction is None:
            raise ValueError("learned variances need the network's interpolation fraction")
        return fraction * self.at("log_beta", i, like) + (1 - fraction) * self.at("log_beta_tilde", i, like)

    # --- the bound ------------------------------------------------------------------------------------------
    def prior_term(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in nats per image, (B,); no network involved."""
        last = torch.full((x0.shape[0],), self.num_steps - 1, device=x0.device)
        mean = self.at("sqrt_ab", last, x0) * x0
        log_var = (2 * self.at("sqrt_1m_ab", last, x0).log()).expand_as(x0)
        return per_image(gaussian_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0)))

    def vlb_term(self, x0: Tensor, x_t: Tensor, i: Tensor, x0_estimate: Tensor, log_var: Tensor) -> Tensor:
        """The bound's term of step t = i + 1 in nats per image, (B,): the discretized decoder's
        -log p(x_0 | x_1) where i = 0, else KL(q(x_{t-1} | x_t, x_0) || N(model mean, exp(log_var)))."""
        # The two means share coef_xt x_t: subtract before adding it, for precision at small beta
        mean_gap = self.at("coef_x0", i, x_t) * (x0 - x0_estimate)
        model_mean = self.posterior_mean(x0_estimate, x_t, i)
        true_log_var = self.at("log_beta_tilde", i, x_t).expand_as(x_t)
        kl = 0.5 * (log_var - true_log_var + torch.exp(true_log_var - log_var)
                    + mean_gap ** 2 * torch.exp(-log_var) - 1.0)
        decoder = -discretized_gaussian_log_prob(x0, model_mean, log_var, self.levels)
        first = (i == 0).view(-1, *([1] * (x0.ndim - 1)))
        return per_image(torch.where(first, decoder, kl))

