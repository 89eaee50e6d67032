"""ODEs of a velocity field dx/dt = v(x, t): integration with a count of evaluations, and log-likelihoods.

Flow matching, and a diffusion model through its probability-flow ODE, map noise to data by such an ODE. Any
velocity callable `v(x, t)` works here: x (B, ...) and t (B,) floats, one time per image.

Solvers: `euler` and `heun` take `steps` equal steps (NFE = steps and 2 * steps); `adaptive` is the
Dormand-Prince 5(4) pair with error control per image (rtol, atol): every image has its own step size, so its
result does not depend on the other images of its batch, and its NFE is counted on its own.

Log-likelihood, by the instantaneous change of variables (Chen et al. 2018, Grathwohl et al. 2019):

    d/dt log p_t(x_t) = -div v(x_t, t)   =>   log p_data(x) = log p_noise(z) + int_{t_data}^{t_noise} div v dt

with z the image carried from t_data to t_noise (either may be the larger time; the integral is signed). The
divergence is exact (one reverse pass per dimension: for small images) or Hutchinson's estimate
eps^T (dv/dx) eps with Rademacher probes eps drawn once per image and kept along its one trajectory; each
probe gives an unbiased estimate of the same integral, and their spread gives the estimate's standard error.

`VPProbabilityFlow` turns a diffusion model's noise prediction (DDPM's, VDM's) into such a velocity, so that
diffusion models get the same likelihood.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from gentrain.nn.flows import standard_normal_log_prob

# v(x (B, ...), t (B,)) -> (B, ...); with a `condition` (per-image inputs such as class labels), the rows of
# it that belong to x come third: the adaptive solver evaluates only the images still under way
Velocity = Callable[..., Tensor]
SOLVERS = ("euler", "heun", "adaptive")
# What an adaptive likelihood solve is assumed to cost when a model sizes its end-of-run pass (final_cost): a
# fixed number, so that the same command covers the same images on any machine (measured: 280-340 NFE per
# image at rtol = atol = 1e-5 for flow matching's default U-Net after 400 steps on MNIST)
ADAPTIVE_NFE_ESTIMATE = 300

log = logging.getLogger(__name__)
# A long adaptive solve (a likelihood pass on hundreds of images) says how far it got this often, in seconds
PROGRESS_SECONDS = 60.0

# Dormand-Prince 5(4) (Hairer, Norsett & Wanner, Solving ODEs I, table 5.2): nodes, stages, the 5th-order
# weights (also the last stage's row: first same as last) and their difference from the 4th-order ones.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6] + (0.0,)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))

# f(y (b, N), t (b,), index (b,)) -> (b, N): the flattened dynamics of the images `index` of the batch
Dynamics = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class Solution:
    x: Tensor  # the state at t_end
    nfe: Tensor  # (B,) velocity evaluations each image took part in


@dataclass
class LogLikelihood:
    log_prob: Tensor  # (B,) log-density of x under the ODE model, in nats (mean over the probes)
    std_error: Tensor  # (B,) its standard error over the probes (exact divergence: 0; one probe: nan)
    z: Tensor  # x carried to t_noise
    nfe: Tensor  # (B,) velocity evaluations (each also has one reverse pass per probe or dimension)


def solve(velocity: Velocity, x: Tensor, t_start: float, t_end: float, *, solver: str = "heun",
          steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
          condition: Optional[Tensor] = None) -> Solution:
    """Carry x (B, ...) from t_start to t_end along dx/dt = velocity(x, t[, condition])."""
    shape = x.shape[1:]

    def dynamics(y: Tensor, t: Tensor, index: Tensor) -> Tensor:
        return _call(velocity, y.view(-1, *shape), t, condition, index).flatten(1)

    y, nfe = integrate(dynamics, x.flatten(1), t_start, t_end, solver=solver, steps=steps, rtol=rtol,
                       atol=atol)
    return Solution(y.view_as(x), nfe)


def log_likelihood(velocity: Velocity, x: Tensor, *, t_data: float = 1.0, t_noise: float = 0.0,
                   solver: str = "adaptive", steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
                   probes: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   prior_log_prob: Callable[[Tensor], Tensor] = standard_normal_log_prob,
                   condition: Optional[Tensor] = None) -> LogLikelihood:
    """log p(x) of the density the ODE carries from the prior at t_noise to t_data (B,): the exact divergence
    when `probes` is None, else Hutchinson's estimate with that many Rademacher probes per image."""
    batch, shape, dims = x.shape[0], x.shape[1:], x[0].numel()
    if probes is not None:
        if probes < 1:
            raise ValueError(f"probes must be >= 1 (None: the exact divergence), got {probes}")
        signs = torch.randint(0, 2, (batch, probes, dims), generator=generator, device=x.device)
        eps = signs.to(x.dtype) * 2 - 1

    def dynamics(y: Tensor, t: Tensor, index: Tensor) -> Tensor:
        with torch.enable_grad():  # evaluation runs under no_grad; the divergence needs dv/dx
            point = y[:, :dims].detach().view(-1, *shape).requires_grad_(True)
            v = _call(velocity, point, t, condition, index).flatten(1)
            if probes is None:
                divergence = exact_divergence(v, point)[:, None]
            else:
                divergence = hutchinson_divergence(v, point, eps[index])
        return torch.cat([v.detach(), divergence.detach()], 1)

    start = torch.cat([x.flatten(1), x.new_zeros(batch, 1 if probes is None else probes)], 1)
    y, nfe = integrate(dynamics, start, t_data, t_noise, solver=solver, steps=steps, rtol=rtol, atol=atol)
    z, integrals = y[:, :dims].view_as(x), y[:, dims:]
    per_probe = prior_log_prob(z)[:, None] + integrals
    if probes is None:
        std_error = torch.zeros_like(per_probe[:, 0])
    elif probes == 1:
        std_error = torch.full_like(per_probe[:, 0], math.nan)
    else:
        std_error = per_probe.std(1) / math.sqrt(probes)
    return LogLikelihood(per_probe.mean(1), std_error, z, nfe)


def _call(velocity: Velocity, x: Tensor, t: Tensor, condition: Optional[Tensor], index: Tensor) -> Tensor:
    return velocity(x, t) if condition is None else velocity(x, t, condition[index])


def exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    """sum_i dv_i/dx_i (B,) of v = f(x) flattened to (B, D), one reverse pass per dimension."""
    columns = []
    for i in range(v.shape[1]):
        (grad,) = torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)
        columns.append(grad.flatten(1)[:, i])
    return torch.stack(columns, 1).sum(1)


def hutchinson_divergence(v: Tensor, x: Tensor, eps: Tensor) -> Tensor:
    """eps_p^T (dv/dx) eps_p per probe (B, P) for probes eps (B, P, D): each an unbiased estimate of the
    divergence when the entries of eps are independent with mean 0 and variance 1."""
    estimates = []
    for p in range(eps.shape[1]):
        (vjp,) = torch.autograd.grad(v, x, eps[:, p].view_as(v), retain_graph=p < eps.shape[1] - 1)
        estimates.append((vjp.flatten(1) * eps[:, p]).sum(1))
    return torch.stack(estimates, 1)


def integrate(f: Dynamics, y: Tensor, t_start: float, t_end: float, *, solver: str, steps: int, rtol: float,
              atol: float) -> tuple[Tensor, Tensor]:
    """y (B, N) carried from t_start to t_end -> (y at t_end, NFE per row (B,))."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}: one of {', '.join(SOLVERS)}")
    if solver == "adaptive":
        return _dormand_prince(f, y, t_start, t_end, rtol, atol)
    if steps < 1:
        raise ValueError(f"a fixed-step solver needs steps >= 1, got {steps}")
    index = torch.arange(y.shape[0], device=y.device)
    h = (t_end - t_start) / steps
    for i in range(steps):
        t = y.new_full((y.shape[0],), t_start + i * h)
        k1 = f(y, t, index)
        if solver == "euler":
            y = y + h * k1
        else:  # Heun: the trapezoid rule with an Euler predictor
            k2 = f(y + h * k1, t + h, index)
            y = y + 0.5 * h * (k1 + k2)
    per_step = 1 if solver == "euler" else 2
    return y, torch.full((y.shape[0],), steps * per_step, device=y.device)


def _rms(v: Tensor) -> Tensor:
    return v.pow(2).mean(1).sqrt()


def _dormand_prince(f: Dynamics, y: Tensor, t_start: float, t_end: float, rtol: float, atol: float,
                    max_steps: int = 100_000) -> tuple[Tensor, Tensor]:
    """The adaptive solver: every row its own step size, only the unfinished rows are evaluated."""
    batch, span = y.shape[0], t_end - t_start
    if span == 0:
        return y, torch.zeros(batch, dtype=torch.long, device=y.device)
    y = y.clone()  # rows are written in place as they finish their steps
    direction = 1.0 if span >= 0 else -1.0
    index = torch.arange(batch, device=y.device)
    t = y.new_full((batch,), t_start)
    k1 = f(y, t, index)
    nfe = torch.ones(batch, dtype=torch.long, device=y.device)
    h = _initial_step(f, y, t, k1, index, direction, abs(span), rtol, atol)
    nfe += 1
    done = torch.zeros(batch, dtype=torch.bool, device=y.device)
    reported = time.monotonic()
    for _ in range(max_steps):
        active = (~done).nonzero().squeeze(1)
        if active.numel() == 0:
            return y, nfe
        if time.monotonic() - reported >= PROGRESS_SECONDS:
            reported = time.monotonic()
            log.info("adaptive ODE solve: %d of %d rows done, %.0f%% of the time span on average, %d network "
                     "evaluations per row so far (most)", int(done.sum()), batch,
                     100 * float(((t - t_start).abs() / abs(span)).mean()), int(nfe.max()))
        ya, ta, ka = y[active], t[active], k1[active]
        remaining = (t_end - ta).abs()
        last = h[active] >= remaining
        ha = torch.minimum(h[active], remaining) * direction
        hc = ha[:, None]
        stages = [ka]
        for c, row in zip(_C[1:], _A[1:]):
            point = ya + hc * sum(a * k for a, k in zip(row, stages) if a)
            stages.append(f(point, ta + c * ha, active))
        y5 = point  # the last stage's point is the 5th-order solution (its row holds the 5th-order weights)
        error = hc * sum(e * k for e, k in zip(_E, stages) if e)
        scale = atol + rtol * torch.maximum(ya.abs(), y5.abs())
        norm = _rms(error / scale)
        nfe[active] += 6
        finite = torch.isfinite(norm) & torch.isfinite(y5).all(1)
        accept = finite & (norm <= 1)
        take = active[accept]
        y[take], k1[take] = y5[accept], stages[-1][accept]
        t[take] = torch.where(last[accept], torch.full_like(ta[accept], t_end), ta[accept] + ha[accept])
        done[take] = last[accept]
        # The usual controller: safety 0.9, growth between 1/5 and 10 (never growth after a rejection)
        factor = (0.9 * norm.clamp_min(1e-10).pow(-0.2)).clamp(0.2, 10.0)
        factor = torch.where(finite, factor, torch.full_like(factor, 0.2))
        factor = torch.where(accept, factor, factor.clamp_max(1.0))
        h[active] = ha.abs() * factor
        if (h[active] < 1e-10 * abs(span)).any():
            raise RuntimeError("the adaptive ODE step size underflowed (a non-finite or stiff field)")
    raise RuntimeError(f"the adaptive ODE solver took more than {max_steps} steps: loosen its tolerance")


def _initial_step(f: Dynamics, y: Tensor, t: Tensor, k1: Tensor, index: Tensor, direction: float, span: float,
                  rtol: float, atol: float) -> Tensor:
    """Hairer, Norsett & Wanner's starting step (II.4), per row, at most the whole interval."""
    scale = atol + rtol * y.abs()
    d0, d1 = _rms(y / scale), _rms(k1 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1).clamp_max(span)
    k2 = f(y + direction * h0[:, None] * k1, t + direction * h0, index)
    d2 = _rms((k2 - k1) / scale) / h0
    biggest = torch.maximum(d1, d2)
    h1 = torch.where(biggest <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / biggest).pow(0.2))
    return torch.minimum(100 * h0, h1).clamp_max(span)


# --- a diffusion model's probability-flow ODE -----------------------------------------------------------
class VPProbabilityFlow:
    """The probability-flow ODE (Song et al. 2021) of a variance-preserving diffusion
    x_s = sqrt(alpha_bar(s)) x + sqrt(1 - alpha_bar(s)) eps, s from t_data (the first noise level) to t_noise,
    given by `schedule(s) -> (log alpha_bar(s), d log alpha_bar / ds)` (float64, (B,)); with g(s) that slope
        dx/ds = g(s) / 2 * (x - eps(x, s) / sqrt(1 - alpha_bar(s))).
    `eps(x, s[, labels])` predicts the noise (a model predicting x0 or v converts with `alpha_bar_at(s)`;
    labels come as log_likelihood's `condition`, row by row with the images). Its density at t_data is a
    density like any other, so its dequantized bound on the discrete NLL is an upper bound too (of the model
    "y at t_data, then quantized"); the prior at t_noise is N(0, I). `of_steps` builds it for DDPM's T discrete
    steps, VDM passes its continuous gamma(t)."""

    def __init__(self, eps: Velocity, schedule: Callable[[Tensor], tuple[Tensor, Tensor]], t_data: float,
                 t_noise: float):
        self.eps, self.schedule, self.t_data, self.t_noise = eps, schedule, t_data, t_noise

    @classmethod
    def of_steps(cls, eps: Velocity, alpha_bar: Tensor) -> "VPProbabilityFlow":
        """The flow of T discrete noise levels alpha_bar (T,) in the continuous step index s in [0, T - 1]
        (the network's time input), log alpha_bar linear between steps."""
        table = alpha_bar.double().log()

        def schedule(s: Tensor) -> tuple[Tensor, Tensor]:
            values = table.to(s.device)
            s = s.double().clamp(0, len(values) - 1)
            k = s.floor().long().clamp_max(len(values) - 2)
            slope = values[k + 1] - values[k]
            return values[k] + slope * (s - k), slope

        return cls(eps, schedule, 0.0, float(len(table) - 1))

    def alpha_bar_at(self, s: Tensor) -> Tensor:
        """alpha_bar at times s (B,)."""
        return self.schedule(s)[0].exp()

    def __call__(self, x: Tensor, s: Tensor, *condition: Tensor) -> Tensor:
        log_alpha_bar, slope = self.schedule(s)
        shape = (-1,) + (1,) * (x.dim() - 1)
        g = slope.to(x.dtype).view(shape)
        sigma = (-log_alpha_bar.exp()).log1p().exp().sqrt().to(x.dtype).view(shape)  # sqrt(1 - alpha_bar)
        return 0.5 * g * (x - self.eps(x, s, *condition) / sigma)

    def log_likelihood(self, x: Tensor, **solver: object) -> LogLikelihood:
        """log p(x) of the model's density at t_data: the ODE from t_data to t_noise (see log_likelihood)."""
        return log_likelihood(self, x, t_data=self.t_data, t_noise=self.t_noise, **solver)
