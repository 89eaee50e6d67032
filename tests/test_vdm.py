"""Exact checks of the continuous-time variational diffusion model (gentrain/models/vdm.py): with the optimal
network for 8-bit discretized Gaussian pixels, its bound, integrated without Monte Carlo error, is the true
NLL; the one-draw estimate averages to the integral; with the optimal network for Gaussian pixels, its
probability-flow ODE likelihood is the density of z_0; the same seed gives the same images; a debug run
trains."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli
from gentrain.config import problems
from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.errors import ConfigError
from gentrain.models.diffusion_sampling import guided_denoiser
from gentrain.models.gaussian_diffusion import GaussianDiffusion
from gentrain.models.schemas.ddpm import Dequantization, Prediction, ReverseVariance, VDMConfig
from gentrain.models.vdm import VDM
from test_ddpm import LEVELS, discretized_gaussian


def tiny(data: DataInfo = DataInfo(1, 1, 1, 256, None), **options) -> VDM:
    torch.manual_seed(0)
    cfg = VDMConfig(base_channels=4, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[],
                    **options)
    return VDM(cfg, data).double().eval()


class OptimalEps(nn.Module):
    """E[eps | z_t] for pixels i.i.d. from P over the 256 values (the posterior over the values)."""

    def __init__(self, model: VDM, p: torch.Tensor):
        super().__init__()
        self.model, self.log_p = model, p.log()

    def forward(self, z: torch.Tensor, time: torch.Tensor, labels=None) -> torch.Tensor:
        if bool((time == time[0]).all()):  # one t: the posterior once per distinct z (the grids repeat them)
            values, inverse = torch.unique(z, return_inverse=True)
            return self.posterior_eps(values.view(-1, 1, 1, 1), time[:1])[inverse.view(-1)]
        return self.posterior_eps(z, time)

    def posterior_eps(self, z: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        gamma = self.model.gamma(time / 1000).view(-1, *([1] * (z.ndim - 1)))
        alpha, sigma = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
        gap = z[..., None] - alpha[..., None] * LEVELS
        w = torch.softmax(self.log_p - gap ** 2 / (2 * sigma[..., None] ** 2), -1)
        return (z - alpha * (w * LEVELS).sum(-1)) / sigma


class DifferentiableOptimalEps(OptimalEps):
    """OptimalEps without its shortcut through torch.unique, which autograd (the ODE's divergence) cannot
    take."""

    def forward(self, z: torch.Tensor, time: torch.Tensor, labels=None) -> torch.Tensor:
        return self.posterior_eps(z, time).to(z.dtype)


def mixture_grid(alpha: float, sigma: float, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (grid index, value index) and their weights P_k N(z; alpha v_k, sigma^2) h on a grid of z with
    spacing sigma / 3: the trapezoid rule, exact to 1e-9 for these Gaussian mixtures."""
    h = sigma / 3
    grid = torch.arange(-alpha - 9 * sigma, alpha + 9 * sigma + h, h, dtype=torch.float64)
    weights = (p.log()[None] - (grid[:, None] - alpha * LEVELS[None]) ** 2 / (2 * sigma ** 2)).exp() \
        * h / (sigma * math.sqrt(2 * math.pi))
    assert abs(float(weights.sum()) - 1) < 1e-9
    keep = weights > 1e-14 * weights.max()
    at, level = keep.nonzero(as_tuple=True)
    return grid[at].view(-1, 1, 1, 1), LEVELS[level].view(-1, 1, 1, 1), weights[keep]


def test_the_optimal_network_gives_the_true_nll_of_discretized_gaussian_pixels():
    p = discretized_gaussian(0.1, 0.3)
    entropy = float(-(torch.xlogy(p, p)).sum())
    model = tiny()
    model.net = OptimalEps(model, p)
    low, high = (float(v) for v in model.gamma_ends)
    with torch.no_grad():
        prior = float((p * model.prior_term(LEVELS.view(-1, 1, 1, 1))).sum())
        alpha_0, sigma_0 = math.sqrt(1 / (1 + math.exp(low))), math.sqrt(1 / (1 + math.exp(-low)))
        z0, x0, w = mixture_grid(alpha_0, sigma_0, p)
        decoder = float((w * model.decoder_term(x0, z0)).sum())
        # the diffusion loss: Gauss-Legendre in t, 12 nodes on each of 24 panels
        nodes, node_weights = (torch.from_numpy(v) for v in np.polynomial.legendre.leggauss(12))
        diffusion = 0.0
        for panel in range(24):
            for node, node_weight in zip(nodes, node_weights):
                t = (panel + (float(node) + 1) / 2) / 24
                gamma = low + (high - low) * t
                alpha, sigma = math.sqrt(1 / (1 + math.exp(gamma))), math.sqrt(1 / (1 + math.exp(-gamma)))
                z_t, x0, w = mixture_grid(alpha, sigma, p)
                times = torch.full((len(z_t),), t, dtype=torch.float64)
                diffusion += float(node_weight) / 48 * float((w * model.diffusion_term(x0, z_t, times)).sum())
    gap_bits = (prior + decoder + diffusion - entropy) / math.log(2)
    assert -1e-4 < gap_bits < 0.01, (gap_bits, prior, decoder, diffusion)

    # the one-draw estimate of the whole bound averages to the integral, within 4 standard errors
    torch.manual_seed(2)
    pixels = LEVELS[torch.multinomial(p, 20000, replacement=True)].view(-1, 1, 1, 1)
    with torch.no_grad():
        estimate = model.bound(pixels, torch.rand(len(pixels), dtype=torch.float64))["nll_nats"]
    expected = prior + decoder + diffusion
    assert abs(float(estimate.mean()) - expected) < 4 * float(estimate.std()) / math.sqrt(len(estimate))


class GaussianEps(nn.Module):
    """E[eps | z_t] in closed form for continuous pixels i.i.d. N(mu, s^2), the network's time 1000 t."""

    def __init__(self, model: VDM, mu: float, s: float):
        super().__init__()
        self.model, self.mu, self.s = model, mu, s

    def forward(self, z: torch.Tensor, time: torch.Tensor, labels=None) -> torch.Tensor:
        gamma = self.model.gamma(time.double() / 1000).view(-1, 1, 1, 1)
        a2, sigma2 = torch.sigmoid(-gamma), torch.sigmoid(gamma)
        return (sigma2.sqrt() * (z - a2.sqrt() * self.mu) / (a2 * self.s ** 2 + sigma2)).to(z.dtype)


@pytest.mark.parametrize("learned_schedule", [False, True])
def test_the_probability_flow_likelihood_of_the_optimal_network_is_the_density_of_z0(learned_schedule):
    """model.ode_likelihood=true, 8-bit 2x2 images of Gaussian pixels: with the closed-form network the ODE
    bound equals its expectation over the dequantization noise, -log of the density of z_0 (N(a mu, a^2 s^2
    + sigma^2) per pixel at gamma_min) integrated over each pixel's bin of width w, minus D ln w, within 0.01
    bits/dim, whether the schedule's ends are learned parameters or fixed."""
    mu, s = 0.1, 0.3
    model = tiny(DataInfo(1, 2, 2, 256, None), ode_likelihood=True, learned_schedule=learned_schedule,
                 gamma_min=-8.0).float()
    model.net = GaussianEps(model, mu, s)
    gen = torch.Generator().manual_seed(4)
    x = ((mu + s * torch.randn(16, 1, 2, 2, generator=gen) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    torch.manual_seed(5)
    out = model.evaluate(Batch(x, None), final=True)
    assert "ode_nll_nats" not in model.evaluate(Batch(x, None), final=False)

    a2 = 1 / (1 + math.exp(-8.0))
    var, w = a2 * s ** 2 + 1 - a2, 2 / 255
    centre = x.double() * w - 1
    expected = (0.5 * math.log(2 * math.pi * var) + ((centre - a2 ** 0.5 * mu) ** 2 + w ** 2 / 12) / (2 * var)
                - math.log(w)).flatten(1).sum(1)
    gap_bits = (out["ode_nll_nats"].double() - expected).mean() / (4 * math.log(2))
    assert abs(float(gap_bits)) < 0.01, float(gap_bits)
    assert float(out["ode_nfe"].min()) > 10  # the adaptive solver, not a fixed few steps
    assert model.final_cost > 100 and any("probability-flow ODE" in n for n in model.metric_notes())


@pytest.mark.parametrize("dequantization,excess_bits", [(Dequantization.truncated_normal, (0.0, 0.01)),
                                                        (Dequantization.uniform, (0.5, 1.4))])
def test_the_ode_bound_of_the_optimal_network_for_discrete_pixels(dequantization, excess_bits):
    """8-bit pixels i.i.d. from a discretized Gaussian and the exact noise prediction of that discrete data, at
    the paper's gamma_min = -13.3 (sigma / bin width = 0.17 at t = 0): with truncated-normal dequantization the
    ODE bound is the true -log P(x) within 0.01 bits/dim; uniform noise in the bin, fitted by a Gaussian bump
    per value, is about 0.94 bits/dim looser (0.5 ln(2 pi 0.17^2) + 1 / (24 0.17^2) nats)."""
    p = discretized_gaussian(0.1, 0.3)
    model = tiny(ode_likelihood=True, ode_dequantization=dequantization).float()
    model.net = DifferentiableOptimalEps(model, p)
    values = torch.multinomial(p, 64, replacement=True, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    with torch.no_grad():
        out = model.evaluate(Batch(values.view(-1, 1, 1, 1).to(torch.uint8), None), final=True)
    excess = float((out["ode_nll_nats"].double() + p.log()[values]).mean()) / math.log(2)
    assert excess_bits[0] < excess < excess_bits[1], excess
    assert any(dequantization.value.replace("_", "-") in note for note in model.metric_notes())


def test_the_ancestral_sampler_of_the_optimal_network_draws_the_data_distribution():
    """With the closed-form noise prediction for pixels i.i.d. N(0.1, 0.3^2), 1000 ancestral steps from gamma =
    5 to the paper's -13.3 give pixels of that mean and spread (on the 8-bit grid, scaled to [0, 1]: mean 0.55,
    standard deviation 0.15) within 2%; fewer steps keep the mean and lose spread (the sampler plugs in the
    posterior mean of x: measured 0.101 at 10 steps, 0.143 at 100)."""
    spread = {}
    for steps in (10, 100, 1000):
        model = tiny(DataInfo(1, 4, 4, 256, None), sampling_steps=steps, learned_schedule=True).float()
        model.net = GaussianEps(model, 0.1, 0.3)
        pixels = model.sample(2000, generator=torch.Generator().manual_seed(3)).double()
        assert abs(float(pixels.mean()) - 0.55) < 0.01 * 0.55, (steps, float(pixels.mean()))
        spread[steps] = float(pixels.std())
    assert abs(spread[1000] - 0.15) < 0.02 * 0.15 and spread[10] < spread[100] < spread[1000], spread


def test_the_same_seed_gives_the_same_images_and_bad_settings_fail():
    model = tiny(DataInfo(1, 8, 8, 256, None), sampling_steps=6, fourier_features=True)
    first, again, other = (model.sample(3, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other) and first.shape == (3, 1, 8, 8)
    assert any("gamma_min" in line for line in problems(VDMConfig(gamma_min=6.0), "model."))


def test_the_conditional_model_guides_and_drops_labels():
    """model.conditional=true: sampling mixes eps_none + scale (eps_label - eps_none) (the denoiser shared with
    model=ddpm), training replaces label_dropout of the labels by the null label, the bound takes the labels;
    guidance without labels, or labels on a dataset without classes, are refused with one line."""
    model = tiny(DataInfo(1, 8, 8, 256, 4), conditional=True, guidance_scale=3.0, sampling_steps=5)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    seen = []
    original = model.predict

    def spy(z, steps, labels):
        seen.append(labels)
        return original(z, steps, labels)

    model.predict = spy
    images = model.sample(2, labels=torch.tensor([1, 3]), generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 8, 8) and len(seen) == 5
    assert all(labels.tolist() == [1, 3, 4, 4] for labels in seen)  # labelled and null halves, every step
    z, labels = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([1, 3])
    steps = torch.tensor([100.0, 900.0], dtype=torch.float64)
    chain = GaussianDiffusion(torch.tensor([0.9, 0.1], dtype=torch.float64), Prediction.eps,
                              ReverseVariance.fixed_small, 256, steps=steps)
    _, eps, _ = guided_denoiser(original, chain, labels, 3.0, 4, torch.device("cpu"))(z, torch.tensor([0, 1]))
    eps_label, eps_none = original(z, steps, labels)[0], original(z, steps, torch.tensor([4, 4]))[0]
    torch.testing.assert_close(eps, eps_none + 3.0 * (eps_label - eps_none))
    assert not torch.allclose(eps_label, eps_none)

    model.train()
    seen.clear()
    model.net.forward = lambda z, t, labels=None: seen.append(labels) or torch.zeros_like(z)
    model.loss(Batch(torch.zeros(4000, 1, 8, 8, dtype=torch.uint8), torch.ones(4000, dtype=torch.long)), 0)
    assert abs(float((seen[0] == 4).double().mean()) - 0.1) < 0.02 and set(seen[0].tolist()) == {1, 4}
    seen.clear()
    model.evaluate(Batch(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2])))
    assert seen[0].tolist() == [0, 1, 2]  # the bound of the class-conditional model, no label dropped

    assert any("guidance_scale" in line for line in problems(VDMConfig(guidance_scale=2.0), "model."))
    with pytest.raises(ConfigError, match="class labels"):
        VDM(VDMConfig(conditional=True), DataInfo(1, 8, 8, 256, None))


@pytest.mark.parametrize("gamma_min", [-13.3, -9.0, -4.0])
def test_the_decoder_normaliser_near_z0_is_the_sum_over_all_values(gamma_min):
    """decoder_term sums over the values near z_0 / alpha_0 only (all of them at gamma_min = -4, where sigma_0
    spans 16 bins): the same nats and gradients as the sum over all 256, also for the pixels at the ends."""
    model = tiny(DataInfo(1, 8, 8, 256, None), gamma_min=gamma_min, learned_schedule=True)
    gen = torch.Generator().manual_seed(3)
    x0 = LEVELS[torch.randint(0, 256, (6, 1, 8, 8), generator=gen)]
    x0[0] = -1.0
    x0[1] = 1.0
    alpha, sigma = model.alpha_sigma(model.gamma_ends[0].expand(6), x0)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    z0 = (alpha * x0 + sigma * noise).detach().requires_grad_()
    windowed = model.decoder_term(x0, z0)
    a, s = model.alpha_sigma(model.gamma_ends[0].expand(6), x0)
    logits = -0.5 * ((z0[..., None] - a[..., None] * model.values) / s[..., None]) ** 2
    index = torch.round((x0 + 1) * 127.5).long()
    full = (logits.logsumexp(-1) - logits.gather(-1, index[..., None])[..., 0]).flatten(1).sum(1)
    torch.testing.assert_close(windowed, full, rtol=1e-12, atol=1e-10)
    grads = [torch.autograd.grad(v.sum(), [z0, model.gamma_ends]) for v in (windowed, full)]
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)


def test_learned_schedule_ends_get_gradients():
    model = tiny(DataInfo(1, 4, 4, 256, None), learned_schedule=True).float().train()
    out = model.loss(Batch(torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8), None), 0)
    out.loss.backward()
    assert model.gamma_ends.grad is not None and model.gamma_ends.grad.abs().min() > 0


def test_debug_run_through_the_cli(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    proc = run_cli("model=vdm", "dataset=mnist", "trainer=debug", "model.fourier_features=true",
                   "model.conditional=true", "model.guidance_scale=2",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert {"bits_per_dim", "bits_per_dim_stderr", "decoder_nats", "diffusion_nats"} <= set(test)
    parts = test["decoder_nats"] + test["diffusion_nats"] + test["prior_nats"]
    assert test["nll_nats"] == pytest.approx(parts, rel=1e-5)
