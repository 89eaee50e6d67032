"""Exact checks of the ODE solvers and likelihoods (gentrain/nn/ode.py) on Gaussian data, whose flow-matching
velocity and log-density are known in closed form (tests/gaussian_flow.py)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from gaussian_flow import GaussianData
from gentrain.metrics import bits_per_dim
from gentrain.nn import ode
from gentrain.nn.ode import (VPProbabilityFlow, exact_divergence, hutchinson_divergence, log_likelihood,
                             solve)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHAPE = (1, 2, 3)  # images of D = 6 dimensions


def images(data: GaussianData, n: int, seed: int = 1) -> torch.Tensor:
    return data.sample(n, torch.Generator().manual_seed(seed)).view(n, *SHAPE)


@pytest.mark.parametrize("sigma_min", [0.0, 0.05])
def test_the_likelihood_of_the_optimal_field_is_the_true_log_density(sigma_min):
    """Integrating data -> noise with the divergence recovers log N(x; mu, Sigma + sigma_min^2 I) within 0.01
    bits/dim (the sign of the integral matters: flipping it is off by several bits)."""
    data = GaussianData.random(6, sigma_min=sigma_min)
    x = images(data, 16)
    result = log_likelihood(data.velocity, x, solver="adaptive", rtol=1e-7, atol=1e-7)
    error = bits_per_dim(result.log_prob - data.log_prob(x), 6).abs()
    assert error.max() < 0.01, error
    assert error.max() < 1e-4  # far within the limit at this tolerance
    assert torch.equal(result.std_error, torch.zeros(16))
    # z is x carried to the noise: standard normal in distribution, and the change of log-density is not 0
    prior = torch.distributions.Normal(0, 1).log_prob(result.z).flatten(1).sum(1)
    assert (result.log_prob - prior).abs().min() > 0.1


def test_euler_heun_and_the_adaptive_solver_agree():
    data = GaussianData.random(6, seed=2)
    x = images(data, 8)
    exact = data.log_prob(x)
    results = {
        "euler": log_likelihood(data.velocity, x, solver="euler", steps=2000),
        "heun": log_likelihood(data.velocity, x, solver="heun", steps=200),
        "adaptive": log_likelihood(data.velocity, x, solver="adaptive", rtol=1e-6, atol=1e-6),
    }
    for name, result in results.items():
        assert bits_per_dim(result.log_prob - exact, 6).abs().max() < 0.01, name
        torch.testing.assert_close(result.z, results["adaptive"].z, rtol=0, atol=4e-3)
    assert results["euler"].nfe.tolist() == [2000] * 8 and results["heun"].nfe.tolist() == [400] * 8
    assert (results["adaptive"].nfe < 400).all()  # fewer evaluations than Heun for the same answer
    few = log_likelihood(data.velocity, x, solver="euler", steps=3)  # and the error shows at few steps
    assert bits_per_dim(few.log_prob - exact, 6).abs().max() > 0.01


def test_hutchinson_agrees_with_the_exact_divergence_within_its_standard_error():
    data = GaussianData.random(6, seed=3)  # rotated: dv/dx is not diagonal, so the probes' estimates vary
    x = images(data, 12)
    exact = log_likelihood(data.velocity, x, solver="heun", steps=50)
    estimate = log_likelihood(data.velocity, x, solver="heun", steps=50, probes=16,
                              generator=torch.Generator().manual_seed(0))
    assert (estimate.std_error > 1e-3).all()
    z_scores = (estimate.log_prob - exact.log_prob) / estimate.std_error
    assert z_scores.abs().max() < 4, z_scores
    torch.testing.assert_close(estimate.z, exact.z)  # the probes never change the trajectory
    one = log_likelihood(data.velocity, x, solver="euler", steps=5, probes=1)
    assert torch.isnan(one.std_error).all()  # one probe has no standard error


def test_the_hutchinson_estimate_is_unbiased_for_a_fixed_matrix():
    torch.manual_seed(0)
    matrix = torch.randn(5, 5, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    v = x @ matrix.T
    trace = torch.full((3,), float(matrix.trace()), dtype=torch.float64)
    torch.testing.assert_close(exact_divergence(v, x), trace)
    eps = torch.randint(0, 2, (3, 4000, 5), dtype=torch.float64) * 2 - 1
    estimates = hutchinson_divergence(v, x, eps)
    assert (estimates.mean(1) - matrix.trace()).abs().max() < 4 * estimates.std(1).max() / math.sqrt(4000)


def test_sampling_carries_noise_to_the_data_distribution():
    data = GaussianData.random(3, seed=4)
    noise = torch.randn(20000, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    solution = solve(data.velocity, noise, 0.0, 1.0, solver="heun", steps=50)
    samples = solution.x
    assert (samples.mean(0) - data.mu).abs().max() < 4 * data.s.max() / math.sqrt(20000)
    torch.testing.assert_close(torch.cov(samples.T), data.covariance(), rtol=0, atol=0.05)
    assert solution.nfe.tolist() == [100] * 20000


def test_each_image_is_solved_on_its_own_steps():
    """The adaptive solver's result for an image does not depend on the batch it is in."""
    data = GaussianData.random(6, seed=6)
    x = images(data, 5)
    x[3] *= 30  # a far-away image needs more steps
    batch = solve(data.velocity, x, 1.0, 0.0, solver="adaptive", rtol=1e-6, atol=1e-6)
    alone = solve(data.velocity, x[:1], 1.0, 0.0, solver="adaptive", rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batch.x[:1], alone.x, rtol=1e-12, atol=1e-12)
    assert batch.nfe[0] == alone.nfe[0] and batch.nfe[3] > batch.nfe[0]
    assert x.abs().max() > 10  # the input was not changed in place


def test_bad_arguments_are_refused():
    data = GaussianData.random(2)
    with pytest.raises(ValueError, match="unknown ODE solver 'rk4'"):
        solve(data.velocity, torch.zeros(1, 2, dtype=torch.float64), 0.0, 1.0, solver="rk4")
    with pytest.raises(ValueError, match="probes must be >= 1"):
        log_likelihood(data.velocity, torch.zeros(1, 2, dtype=torch.float64), probes=0)


def test_the_probability_flow_of_a_diffusion_with_the_optimal_noise_prediction_gives_the_true_density():
    """A DDPM's noise levels (linear schedule, T = 1000) on Gaussian data N(mu, diag s^2): the optimal noise
    prediction E[eps | x_s] is known in closed form, and the ODE likelihood at s = 0 equals the density of the
    noisy data N(a mu, a^2 s^2 + 1 - a^2), a = sqrt(alpha_bar(0)), within 0.01 bits/dim."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    data = GaussianData.random(6, rotate=False, seed=8)
    flow = None

    def eps(x: torch.Tensor, s: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """E[eps | x_s] for data N(mu + shift, diag s^2): each image's own shift, as a label would be."""
        ab = flow.alpha_bar_at(s).view(-1, 1)
        flat, mu = x.flatten(1), data.mu + shift[:, None]
        noisy_variance = ab * data.s ** 2 + 1 - ab
        return ((1 - ab).sqrt() * (flat - ab.sqrt() * mu) / noisy_variance).view_as(x)

    flow = VPProbabilityFlow.of_steps(eps, alpha_bar)
    between = (alpha_bar[2] * alpha_bar[3]).sqrt()  # log-linear between steps 2 and 3
    torch.testing.assert_close(flow.alpha_bar_at(torch.tensor([0.0, 999.0, 2.5])),
                               torch.stack([alpha_bar[0], alpha_bar[-1], between]))
    shift = torch.linspace(-1, 1, 8, dtype=torch.float64)
    x = images(data, 8, seed=9) + shift.view(-1, 1, 1, 1)

    def noisy_data(ab: torch.Tensor) -> torch.distributions.Normal:
        mean, std = ab.sqrt() * (data.mu + shift[:, None]), (ab * data.s ** 2 + 1 - ab).sqrt()
        return torch.distributions.Normal(mean, std)

    # The marginal at s = T - 1 as the prior, to check the ODE alone (N(0, I) differs by alpha_bar ~ 4e-5)
    prior = noisy_data(alpha_bar[-1])
    result = flow.log_likelihood(x, solver="adaptive", rtol=1e-5, atol=1e-5, condition=shift,
                                 prior_log_prob=lambda z: prior.log_prob(z.flatten(1)).sum(1))
    assert result.nfe.unique().numel() > 1  # images finish apart: the shifts must follow them
    error = bits_per_dim(result.log_prob - noisy_data(alpha_bar[0]).log_prob(x.flatten(1)).sum(1), 6).abs()
    assert error.max() < 0.01, error


def test_a_long_adaptive_solve_reports_its_progress(monkeypatch, caplog):
    monkeypatch.setattr(ode, "PROGRESS_SECONDS", 0.0)  # every step reports
    with caplog.at_level(logging.INFO, logger="gentrain.nn.ode"):
        solve(lambda x, t: -x, torch.randn(3, 2), 0.0, 1.0, solver="adaptive", rtol=1e-6, atol=1e-6)
    lines = [r.getMessage() for r in caplog.records if r.name == "gentrain.nn.ode"]
    assert lines and all(" of 3 rows done" in line for line in lines)
    assert "% of the time span on average" in lines[-1]
