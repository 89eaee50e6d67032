"""Samplers of a Gaussian diffusion: ancestral (Ho et al.'s Algorithm 2) and DDIM (Song et al. 2021).

Both walk a chain of S steps: the model's T steps, or S of them evenly spaced (GaussianDiffusion.respaced),
where the ancestral sampler uses the respaced chain's own betas (Nichol & Dhariwal, section 4). They draw the
same noise in the same order, x_T first and then one draw per step but the last, so that DDIM with eta = 1
and the ancestral sampler with fixed_small variances (sigma_t^2 = beta~_t, which is what DDIM's eta = 1
means) give the same images from the same generator.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from gentrain.models.gaussian_diffusion import GaussianDiffusion

# (x_t, positions in the chain (B,)) -> (x_0 estimate, eps estimate, learned-variance fraction or None)
Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Optional[Tensor]]]


# (x_t, the network's time inputs (B,), labels or None) -> (its prediction, learned-variance fraction or None)
Predictor = Callable[[Tensor, Tensor, Optional[Tensor]], tuple[Tensor, Optional[Tensor]]]


def guided_denoiser(predict: Predictor, chain: GaussianDiffusion, labels: Optional[Tensor], scale: float,
                    null_label: Optional[int], device: torch.device) -> Denoiser:
    """The chain's denoiser of a network's prediction, with classifier-free guidance (Ho & Salimans 2022) when
    labels are given and scale != 1: eps = eps_none + scale (eps_label - eps_none), the two halves of one
    batch of twice the images."""
    guided = labels is not None and scale != 1.0
    table = chain.steps.to(device)  # the network's time inputs, moved once per sampling run

    def run(x: Tensor, i: Tensor) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        times = table[i]
        if not guided:
            prediction, fraction = predict(x, times, labels)
            return (*chain.x0_and_eps(prediction, x, i), fraction)
        none = torch.full_like(labels, null_label)
        prediction, fraction = predict(torch.cat([x, x]), torch.cat([times, times]), torch.cat([labels, none]))
        x0, eps = chain.x0_and_eps(prediction, torch.cat([x, x]), torch.cat([i, i]))
        eps_label, eps_none = eps.chunk(2)
        eps = eps_none + scale * (eps_label - eps_none)
        x0 = (x - chain.at("sqrt_1m_ab", i, x) * eps) / chain.at("sqrt_ab", i, x)
        return x0, eps, None if fraction is None else fraction.chunk(2)[0]

    return run


def denoised(denoiser: Denoiser, chain: GaussianDiffusion, x: Tensor, i: Tensor,
             clip: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """The denoiser's estimates, x_0 clipped to the data's range [-1, 1] when asked (and eps recomputed from
    it, so that both samplers step from the same pair)."""
    x0, eps, fraction = denoiser(x, i)
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = chain.eps_from_x0(x0, x, i)
    return x0, eps, fraction


@torch.no_grad()
def ancestral_sample(denoiser: Denoiser, chain: GaussianDiffusion, shape: tuple[int, ...], *, clip: bool,
                     generator: Optional[torch.Generator], device: torch.device,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """x_{t-1} = mean(x_t) + sigma_t z at every step; the last step returns the mean (Ho et al.)."""
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    for position in reversed(range(chain.num_steps)):
        i = torch.full((shape[0],), position, device=device, dtype=torch.long)
        x0, _, fraction = denoised(denoiser, chain, x, i, clip)
        mean = chain.posterior_mean(x0, x, i)
        if position == 0:
            return mean
        log_var = chain.reverse_log_var(i, x, fraction)
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        x = mean + torch.exp(0.5 * log_var) * noise
    raise AssertionError("unreachable: a chain has at least 2 steps")


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, chain: GaussianDiffusion, shape: tuple[int, ...], *, eta: float,
                clip: bool, generator: Optional[torch.Generator], device: torch.device,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z, with
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s) (Song et al., eq. 16)."""
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    for position in reversed(range(chain.num_steps)):
        i = torch.full((shape[0],), position, device=device, dtype=torch.long)
        x0, eps, _ = denoised(denoiser, chain, x, i, clip)
        if position == 0:
            return x0
        ab, ab_prev = chain.at("sqrt_ab", i, x) ** 2, chain.at("sqrt_ab_prev", i, x) ** 2
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x = x + sigma * torch.randn(shape, generator=generator, device=device, dtype=dtype)
    raise AssertionError("unreachable: a chain has at least 2 steps")
