"""Exact checks of the diffusion model's likelihood and samplers (gentrain/models/ddpm.py,
gaussian_diffusion.py, diffusion_sampling.py).

The bound is checked on data whose likelihood is known in closed form: pixels drawn i.i.d. from a Gaussian and
discretized to 8 bits (edge bins open), where the optimal denoiser is the exact posterior over the 256 values.
Its expectation over x_t is integrated numerically (trapezoid rule on a grid finer than the noise), so the
checks carry no Monte Carlo error; the Monte Carlo estimators are then checked against those expectations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gentrain.config import problems
from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.errors import ConfigError
from gentrain.models.ddpm import DDPM
from gentrain.models.diffusion_sampling import ancestral_sample, ddim_sample
from gentrain.models.gaussian_diffusion import (GaussianDiffusion, cosine_alpha_bar,
                                                discretized_gaussian_log_prob, linear_alpha_bar)
from gentrain.models.schemas.ddpm import (DDPMConfig, Dequantization, NoiseSchedule, Objective, Prediction,
                                          ReverseVariance, Sampler)

LEVELS = torch.linspace(-1, 1, 256, dtype=torch.float64)
HALF = 1 / 255


def tiny(data: DataInfo = DataInfo(1, 1, 1, 256, None), variance=ReverseVariance.learned, **options) -> DDPM:
    objective = Objective.hybrid if variance is ReverseVariance.learned else Objective.simple
    cfg = DDPMConfig(variance=variance, objective=objective, base_channels=4, channel_mult=[1, 2],
                     num_res_blocks=1, attention_resolutions=[], **options)
    torch.manual_seed(0)
    return DDPM(cfg, data).double().eval()


def discretized_gaussian(mu: float, s: float) -> torch.Tensor:
    """P(k) of the 256 values when a pixel is N(mu, s^2) rounded to its bin (outer bins open)."""
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    upper = torch.where(LEVELS > 1 - HALF, math.inf, (LEVELS + HALF - mu) / s)
    lower = torch.where(LEVELS < -1 + HALF, -math.inf, (LEVELS - HALF - mu) / s)
    return normal.cdf(upper) - normal.cdf(lower)


class OptimalDenoiser(nn.Module):
    """The Bayes-optimal network for pixels i.i.d. from P over the 256 values: eps from E[x_0 | x_t] and, for
    learned variances, the exact Var(x_{t-1} | x_t) = beta~_t + coef^2 Var(x_0 | x_t) (the decoder:
    Var(x_0 | x_1)).
    Called with one step at a time; computes the posterior once per distinct x_t."""

    def __init__(self, diffusion: GaussianDiffusion, p: torch.Tensor, learned: bool):
        super().__init__()
        self.d, self.log_p, self.learned = diffusion, p.log(), learned

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        values, inverse = torch.unique(x, return_inverse=True)
        i = t.long()[:1].expand(len(values))
        x = values.view(-1, 1, 1, 1)
        ab = self.d.at("sqrt_ab", i, x) ** 2
        gap = x[..., None] - ab.sqrt()[..., None] * LEVELS
        log_joint = self.log_p - gap ** 2 / (2 * (1 - ab[..., None]))
        w = torch.softmax(log_joint, -1)
        mean = (w * LEVELS).sum(-1)
        var = (w * (LEVELS - mean[..., None]) ** 2).sum(-1)
        out = (x - ab.sqrt() * mean) / (1 - ab).sqrt()
        if self.learned:
            log_beta, log_beta_tilde = self.d.at("log_beta", i, x), self.d.at("log_beta_tilde", i, x)
            beta_tilde = 0.0 if int(i[0]) == 0 else log_beta_tilde.exp()
            target = (beta_tilde + self.d.at("coef_x0", i, x) ** 2 * var).clamp(min=1e-30).log()
            fraction = (target - log_beta_tilde) / (log_beta - log_beta_tilde)
            out = torch.cat([out, 2 * fraction - 1], 1)
        return out[inverse.view(-1)]


def expected_bound_nats(model: DDPM, p: torch.Tensor, points_per_std: float = 3.0) -> float:
    """E over x_0 ~ P and the forward process of gentrain's bound for one pixel: the prior term averaged over
    P, plus each step's term integrated over the mixture density of x_t on a grid of spacing
    std / points_per_std."""
    d, total = model.diffusion, 0.0
    with torch.no_grad():
        for step in range(d.num_steps):
            ab = float(d.alpha_bar[step])
            a, std = math.sqrt(ab), math.sqrt(1 - ab)
            h = std / points_per_std
            grid = torch.arange(-a - 9 * std, a + 9 * std + h, h, dtype=torch.float64)
            weights = (p.log()[None] - (grid[:, None] - a * LEVELS[None]) ** 2 / (2 * std ** 2)).exp() \
                * h / (std * math.sqrt(2 * math.pi))
            assert abs(float(weights.sum()) - 1) < 1e-9  # the grid integrates the mixture density exactly
            keep = weights > 1e-14 * weights.max()
            at, level = keep.nonzero(as_tuple=True)
            i = torch.full((len(at),), step)
            term = model.term_given(LEVELS[level].view(-1, 1, 1, 1), grid[at].view(-1, 1, 1, 1), i, None)
            total += float((weights[keep] * term).sum())
        total += float((p * d.prior_term(LEVELS.view(-1, 1, 1, 1))).sum())
    return total


@pytest.mark.parametrize("variance", [ReverseVariance.learned, ReverseVariance.fixed_large])
def test_the_optimal_denoiser_gives_the_true_nll_of_discretized_gaussian_pixels(variance):
    """True NLL: the entropy of the discrete 8-bit distribution, in closed form. gentrain's bound with the
    optimal network is an upper bound on it (never below) and, with T = 1000 steps, within 0.01 bits/dim of
    it."""
    p = discretized_gaussian(0.1, 0.3)
    entropy = float(-(torch.xlogy(p, p)).sum())
    model = tiny(variance=variance)
    model.net = OptimalDenoiser(model.diffusion, p, learned=variance is ReverseVariance.learned)
    gap_bits = (expected_bound_nats(model, p) - entropy) / math.log(2)
    assert -1e-6 < gap_bits < 0.01, gap_bits


class PriorDenoiser(nn.Module):
    """The optimal network for data ~ N(0, I): eps = sqrt(1 - abar_t) x_t, variance beta_t. Its reverse
    process is the forward process of N(0, I) run backwards, so the bound telescopes (see the test)."""

    def __init__(self, diffusion: GaussianDiffusion):
        super().__init__()
        self.d = diffusion

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        eps = self.d.at("sqrt_1m_ab", t.long(), x) * x
        return torch.cat([eps, torch.ones_like(x)], 1)  # raw output 1: fraction 1, sigma_t^2 = beta_t


def prior_model_bound(x0: torch.Tensor, beta_1: float) -> torch.Tensor:
    """The bound of the prior model in closed form, per pixel: sum_t KL + L_T
    = E_q log q(x_1:T|x_0) / p(x_1:T)
    = E_x1 log N(x_0; sqrt(1 - beta_1) x_1, beta_1) - log N(x_0; 0, 1), plus the decoder's -log P(x_0 | x_1);
    the expectation over x_1 ~ N(sqrt(1 - beta_1) x_0, beta_1) by Gauss-Hermite quadrature."""
    nodes, weights = (torch.from_numpy(v) for v in np.polynomial.hermite_e.hermegauss(40))
    weights = weights / weights.sum()
    a, std = math.sqrt(1 - beta_1), math.sqrt(beta_1)
    x1 = a * x0[..., None] + std * nodes
    mean = a * x1
    x = x0[..., None]
    upper = torch.where(x > 1 - HALF, math.inf, (x + HALF - mean) / std)
    lower = torch.where(x < -1 + HALF, -math.inf, (x - HALF - mean) / std)
    mirror = lower > 0  # in the right tail: 1 - cdf, from the left tail's side (accurate there)
    cdf = lambda z: torch.special.log_ndtr(z).exp()  # noqa: E731  (torch's ndtr underflows below -8)
    mass = torch.where(mirror, cdf(-lower) - cdf(-upper), cdf(upper) - cdf(lower))
    log_density = -0.5 * ((x - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))
    inner = ((log_density - mass.log()) * weights).sum(-1)
    return inner + 0.5 * x0 ** 2 + 0.5 * math.log(2 * math.pi)


def test_a_model_whose_reverse_process_is_the_prior_scores_the_prior_bound():
    # a short schedule (abar_T = 0.13), so that the prior term weighs in the sum as much as the others
    model = tiny(beta_end=0.004)
    model.net = PriorDenoiser(model.diffusion)
    x0 = LEVELS[torch.tensor([0, 3, 100, 128, 200, 254, 255])]  # the edge bins, the middle, both signs
    beta_1 = 1 - float(model.diffusion.alpha_bar[0])
    closed = prior_model_bound(x0, beta_1)
    # gentrain's terms integrated over x_t (exact here: Gauss-Hermite in x_t for every step at once)
    nodes, weights = (torch.from_numpy(v) for v in np.polynomial.hermite_e.hermegauss(40))
    weights = weights / weights.sum()
    T = model.timesteps
    steps = torch.arange(T).repeat_interleave(len(nodes))
    ab = model.diffusion.alpha_bar[steps]
    expected = []
    with torch.no_grad():
        for value in x0:
            x_t = ab.sqrt() * value + (1 - ab).sqrt() * nodes.repeat(T)
            pixels = torch.full_like(x_t, value).view(-1, 1, 1, 1)
            terms = model.term_given(pixels, x_t.view(-1, 1, 1, 1), steps, None)
            prior = model.diffusion.prior_term(value.view(1, 1, 1, 1))
            expected.append(float((terms * weights.repeat(T)).sum() + prior))
    torch.testing.assert_close(torch.tensor(expected, dtype=torch.float64), closed, rtol=0, atol=1e-6)

    # The estimators average to it: the full sum over T steps (one noise draw per step) and the sampled-t
    # estimate, each within 4 standard errors of its mean
    data = DataInfo(1, 2, 2, 256, None)
    model = tiny(data, beta_end=0.004)
    model.net = PriorDenoiser(model.diffusion)
    torch.manual_seed(1)
    images = LEVELS[torch.randint(0, 256, (8, 1, 2, 2))]
    truth = prior_model_bound(images, beta_1).flatten(1).sum(1)
    with torch.no_grad():
        full = model.full_bound(images.repeat(16, 1, 1, 1), None)
        sampled = model.sampled_bound(images.repeat(2500, 1, 1, 1), None)["nll_nats"]
    for estimate, copies in ((full["nll_nats"], 16), (sampled, 2500)):
        errors = estimate - truth.repeat(copies)
        assert abs(errors.mean()) < 4 * errors.std() / math.sqrt(len(errors)), (errors.mean(), errors.std())
    assert full["prior_nats"].min() > 0 and full["decoder_nats"].min() > 0
    parts = full["decoder_nats"] + full["diffusion_nats"] + full["prior_nats"]
    torch.testing.assert_close(full["nll_nats"], parts)


def test_discretized_decoder_is_normalised_in_the_tails_and_for_binary_data():
    for levels in (256, 2):
        x = torch.linspace(-1, 1, levels, dtype=torch.float64).view(-1, 1)
        mean = torch.tensor([[-3.0, -1.0, -0.3, 0.0, 0.5, 1.0, 4.0]], dtype=torch.float64)
        for log_var in (-12.0, -4.0, 0.0):
            log_p = discretized_gaussian_log_prob(x, mean, torch.full_like(mean, log_var), levels)
            torch.testing.assert_close(log_p.exp().sum(0), torch.ones(mean.shape[1], dtype=torch.float64))
    # deep in a tail the log-probability stays finite and accurate (no difference of two numbers near 1):
    # the bin 0.5 +- 1/255 under N(0, exp(-10)), 74 standard deviations out, against the density integrated
    std = math.exp(-5.0)
    double = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    log_p = discretized_gaussian_log_prob(double(0.5), double(0.0), double(-10.0), 256)
    z = torch.linspace((0.5 - HALF) / std, (0.5 + HALF) / std, 100001, dtype=torch.float64)
    log_density = -0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)
    integral = torch.logsumexp(log_density, 0) + math.log(float(z[1] - z[0]))  # a Riemann sum, fine here
    assert torch.isfinite(log_p) and abs(float(log_p) - float(integral)) < 1e-3, (log_p, integral)
    mean = torch.zeros(3, requires_grad=True)
    log_p = discretized_gaussian_log_prob(torch.tensor([-1.0, 0.0, 1.0]), mean, torch.full((3,), -9.0), 256)
    log_p.sum().backward()
    assert torch.isfinite(mean.grad).all()


def test_schedules_match_their_formulas():
    betas = lambda ab: 1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])  # noqa: E731
    torch.testing.assert_close(betas(linear_alpha_bar(1000, 1e-4, 0.02)),
                               torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    torch.testing.assert_close(betas(linear_alpha_bar(250, 1e-4, 0.02)),
                               torch.linspace(4e-4, 0.08, 250, dtype=torch.float64))  # scaled by 1000 / T
    t = torch.arange(1001, dtype=torch.float64)
    f = torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    cosine = cosine_alpha_bar(1000)
    unclipped = slice(0, 990)  # the last betas are clipped at 0.999
    torch.testing.assert_close(cosine[unclipped], (f[1:] / f[0])[unclipped])
    assert betas(cosine).max() <= 0.999 and float(cosine[-1]) < 1e-6


@pytest.mark.parametrize("prediction", list(Prediction))
def test_parametrizations_convert_consistently(prediction):
    d = GaussianDiffusion(cosine_alpha_bar(100), prediction, ReverseVariance.fixed_large, 256)
    torch.manual_seed(0)
    x0 = torch.rand(6, 1, 3, 3, dtype=torch.float64) * 2 - 1
    eps = torch.randn(6, 1, 3, 3, dtype=torch.float64)
    i = torch.tensor([0, 1, 30, 50, 98, 99])
    x_t = d.noisy(x0, i, eps)
    x0_back, eps_back = d.x0_and_eps(d.target(x0, eps, i), x_t, i)
    torch.testing.assert_close(x0_back, x0)
    torch.testing.assert_close(eps_back, eps)
    torch.testing.assert_close(d.eps_from_x0(x0, x_t, i), eps)
    # the posterior mean with the true x_0 is the mean of q(x_{t-1} | x_t, x_0) (Bayes on the Gaussian chain)
    ab, ab_prev = d.alpha_bar[i].view(-1, 1, 1, 1), d.alpha_bar[(i - 1).clamp(min=0)].view(-1, 1, 1, 1)
    ab_prev = torch.where(i.view(-1, 1, 1, 1) == 0, torch.ones_like(ab_prev), ab_prev)
    alpha = ab / ab_prev
    precision = 1 / (1 - ab_prev) + alpha / (1 - alpha)
    mean = (ab_prev.sqrt() * x0 / (1 - ab_prev) + alpha.sqrt() * x_t / (1 - alpha)) / precision
    torch.testing.assert_close(d.posterior_mean(x0, x_t, i)[1:], mean[1:])


def random_unet_model(**options) -> DDPM:
    model = tiny(DataInfo(1, 8, 8, 256, None), timesteps=50, **options)
    with torch.no_grad():  # random instead of zero output layers: the network is not the zero function
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("steps", [50, 10])
def test_ddim_with_eta_1_is_the_ancestral_sampler_with_small_variances(steps):
    model = random_unet_model(variance=ReverseVariance.fixed_small)
    chain = model.diffusion.respaced(steps)
    assert chain.num_steps == steps and int(chain.steps[0]) == 0 and int(chain.steps[-1]) == 49
    draws = {}
    for name, sampler in (("ancestral", ancestral_sample), ("ddim1", ddim_sample), ("ddim0", ddim_sample)):
        kwargs = {"eta": 1.0 if name == "ddim1" else 0.0} if sampler is ddim_sample else {}
        generator = torch.Generator().manual_seed(5)
        draws[name] = sampler(model.denoiser(chain, None), chain, (3, 1, 8, 8), clip=True,
                              generator=generator, device=torch.device("cpu"), dtype=torch.float64, **kwargs)
    torch.testing.assert_close(draws["ddim1"], draws["ancestral"], rtol=0, atol=1e-9)
    assert (draws["ddim0"] - draws["ancestral"]).abs().max() > 0.01  # eta = 0 is another sampler


@pytest.mark.parametrize("sampler", list(Sampler))
def test_the_same_seed_gives_the_same_images(sampler):
    model = random_unet_model(variance=ReverseVariance.fixed_large, sampler=sampler, sampling_steps=8,
                              ddim_eta=0.5)
    first, again, other = (model.sample(4, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (4, 1, 8, 8) and first.min() >= 0 and first.max() <= 1
    assert torch.equal((first * 255).round(), first * 255)  # on the 8-bit grid


def test_classifier_free_guidance_combines_the_labelled_and_unlabelled_predictions():
    model = tiny(DataInfo(1, 8, 8, 256, 4), variance=ReverseVariance.fixed_large, conditional=True,
                 guidance_scale=3.0, timesteps=50)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    chain = model.diffusion
    x, i, labels = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([10, 40]), torch.tensor([1, 3])
    _, eps, _ = model.denoiser(chain, labels)(x, i)
    eps_label = model.predict(x, i, labels)[0]
    eps_none = model.predict(x, i, torch.full_like(labels, 4))[0]
    torch.testing.assert_close(eps, eps_none + 3.0 * (eps_label - eps_none))
    assert not torch.allclose(eps_label, eps_none)
    # training drops labels to the null label at the set rate
    model.train()
    seen = []
    model.predict = lambda x_t, steps, labels: (seen.append(labels) or (torch.zeros_like(x_t), None))
    model.loss(Batch(torch.zeros(4000, 1, 8, 8, dtype=torch.uint8), torch.ones(4000, dtype=torch.long)), 0)
    dropped = float((seen[0] == 4).double().mean())
    assert abs(dropped - 0.1) < 0.02 and set(seen[0].tolist()) == {1, 4}


class GaussianPrediction(nn.Module):
    """The optimal network, at continuous step indices, for continuous pixels i.i.d. N(mu + 0.1 label, s^2):
    E[eps | x_s] in closed form, given in the model's parametrization (eps, x0 or v)."""

    def __init__(self, model: DDPM, mu: float, s: float):
        super().__init__()
        self.flow, self.prediction, self.mu, self.s = model.probability_flow, model.cfg.prediction, mu, s

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ab = self.flow.alpha_bar_at(t).to(x.dtype).view(-1, 1, 1, 1)
        mean = self.mu + 0.1 * labels.to(x.dtype).view(-1, 1, 1, 1)
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * mean) / (ab * self.s ** 2 + 1 - ab)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        return {Prediction.eps: eps, Prediction.x0: x0, Prediction.v: ab.sqrt() * eps - (1 - ab).sqrt() * x0}[
            self.prediction]


@pytest.mark.parametrize("prediction,dequantization", [(p, Dequantization.uniform) for p in Prediction]
                         + [(Prediction.eps, Dequantization.truncated_normal)])
def test_the_probability_flow_likelihood_of_the_optimal_network_is_the_data_density(prediction,
                                                                                     dequantization):
    """model.ode_likelihood=true, for 8-bit 2x2 images of Gaussian pixels, one mean per class: with the
    closed-form network the ODE bound equals its expectation over the dequantization noise within 0.01
    bits/dim: with uniform noise, -log of the density at the first noise level (N(a mu, a^2 s^2 + 1 - a^2) per
    pixel, a^2 = alpha_bar_1) integrated over each pixel's bin of width w, minus D ln w; with the truncated
    normal y = a x + sigma e (|e| <= A = a w / (2 sigma), E e^2 = 1 - 2 A phi(A) / Z, Z = 1 - 2 Phi(-A)),
    E[-log p(y)] + E[log q(y | x)] in closed form; labels follow their images in the adaptive solver."""
    mu, s = 0.1, 0.3
    model = tiny(DataInfo(1, 2, 2, 256, 3), variance=ReverseVariance.fixed_large, conditional=True,
                 prediction=prediction, ode_likelihood=True, ode_dequantization=dequantization).float()
    model.net = GaussianPrediction(model, mu, s)
    gen = torch.Generator().manual_seed(4)
    labels = torch.arange(24) % 3
    pixels = mu + 0.1 * labels.view(-1, 1, 1, 1) + s * torch.randn(24, 1, 2, 2, generator=gen)
    x = ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    torch.manual_seed(5)
    out = model.evaluate(Batch(x, labels), final=True)
    assert {"ode_nll_nats", "ode_bits_per_dim", "ode_nfe", "nll_nats"} <= set(out)
    assert "ode_nll_nats" not in model.evaluate(Batch(x, labels), final=False)

    a2 = float(model.diffusion.alpha_bar[0])
    mean, var, w = a2 ** 0.5 * (mu + 0.1 * labels.view(-1, 1, 1, 1)), a2 * s ** 2 + 1 - a2, 2 / 255
    centre = x.double() * w - 1
    if dequantization is Dequantization.uniform:
        expected = (0.5 * math.log(2 * math.pi * var) + ((centre - mean) ** 2 + w ** 2 / 12) / (2 * var)
                    - math.log(w)).flatten(1).sum(1)
    else:
        sigma = math.sqrt(1 - a2)
        half = a2 ** 0.5 * w / (2 * sigma)
        mass = math.erf(half / math.sqrt(2))
        e2 = 1 - 2 * half * math.exp(-half ** 2 / 2) / math.sqrt(2 * math.pi) / mass
        expected = (0.5 * math.log(2 * math.pi * var) + ((a2 ** 0.5 * centre - mean) ** 2 + sigma ** 2 * e2)
                    / (2 * var) - 0.5 * e2 - 0.5 * math.log(2 * math.pi * sigma ** 2) - math.log(mass)
                    ).flatten(1).sum(1)
    gap_bits = (out["ode_nll_nats"].double() - expected).mean() / (4 * math.log(2))
    assert abs(float(gap_bits)) < 0.01, float(gap_bits)
    assert float(out["ode_nfe"].min()) > 10  # the adaptive solver, not a fixed few steps
    assert model.final_cost > 100 and any("probability-flow ODE" in n for n in model.metric_notes())


def test_bad_settings_fail_with_one_line():
    assert any("hybrid" in line for line in problems(DDPMConfig(objective=Objective.hybrid), "model."))
    assert any("learned" in line for line in problems(DDPMConfig(variance=ReverseVariance.learned), "model."))
    assert any("beta_end" in line for line in problems(DDPMConfig(timesteps=10), "model."))
    assert not list(problems(DDPMConfig(schedule=NoiseSchedule.cosine, timesteps=10), "model."))
    assert any("needs model.conditional=true" in line for line in problems(DDPMConfig(guidance_scale=2.0),
                                                                             "model."))
    with pytest.raises(ConfigError, match="class labels"):
        DDPM(DDPMConfig(conditional=True), DataInfo(1, 8, 8, 256, None))
    with pytest.raises(ConfigError, match="attention heads"):
        DDPM(DDPMConfig(base_channels=5, attention_heads=4), DataInfo(1, 8, 8, 256, None))
    with pytest.raises(ConfigError, match="square"):
        DDPM(DDPMConfig(), DataInfo(1, 8, 12, 256, None))
