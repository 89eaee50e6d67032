"""Exact checks of the discrete pixel likelihoods and of bits/dim."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from gentrain.distributions import Bernoulli, Categorical, DiscretizedLogistic, DiscretizedLogisticMixture
from gentrain.metrics import bits_per_dim


def test_uniform_categorical_scores_exactly_8_bits_per_dim() -> None:
    likelihood = Categorical(256, 3)
    x = torch.randint(0, 256, (4, 3, 8, 8))
    params = torch.zeros(4, likelihood.num_params, 8, 8)  # equal logits: 1/256 for every value
    bpd = bits_per_dim(-likelihood.log_prob(params, x).double(), 3 * 8 * 8)
    assert torch.allclose(bpd, torch.full_like(bpd, 8.0), atol=1e-6, rtol=0)


def test_uniform_bernoulli_scores_1_bit_per_dim() -> None:
    x = torch.randint(0, 2, (2, 1, 5, 5))
    bpd = bits_per_dim(-Bernoulli(2, 1).log_prob(torch.zeros(2, 1, 5, 5), x).double(), 25)
    assert torch.allclose(bpd, torch.ones_like(bpd), atol=1e-6, rtol=0)


def test_bernoulli_refuses_8_bit_data() -> None:
    with pytest.raises(ValueError, match="binarized"):
        Bernoulli(256, 1)


@pytest.mark.parametrize("mean, log_scale", [(0.0, -1.0), (0.93, -4.0), (-0.999, -6.5), (0.3, 2.0), (-0.2, -7.0)])
def test_discretized_logistic_sums_to_one(mean: float, log_scale: float) -> None:
    likelihood = DiscretizedLogistic(256, 1)
    x = torch.arange(256).view(256, 1, 1, 1)
    params = torch.tensor([mean, log_scale]).view(1, 2, 1, 1).expand(256, 2, 1, 1)
    total = likelihood.log_prob(params, x).double().exp().sum()
    assert total.item() == pytest.approx(1.0, abs=2e-4)


def test_discretized_logistic_mixture_rgb_sums_to_one() -> None:
    levels, channels, k = 16, 3, 3  # 16^3 joint values enumerated exactly
    likelihood = DiscretizedLogisticMixture(levels, channels, num_mixtures=k)
    torch.manual_seed(0)
    params = torch.randn(1, likelihood.num_params, 1, 1).expand(levels**3, -1, 1, 1)
    x = torch.tensor(list(itertools.product(range(levels), repeat=3))).view(-1, 3, 1, 1)
    total = likelihood.log_prob(params, x).double().exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_samples_follow_a_peaked_distribution() -> None:
    likelihood = Categorical(256, 1)
    params = torch.full((2000, 256, 1, 1), -30.0)
    params[:, 17] = 0.0
    assert (likelihood.sample(params) == 17).all()
    mixture = DiscretizedLogisticMixture(256, 3, num_mixtures=2)
    # Layout: K mixture logits, then per component C means, C log-scales, C(C-1)/2 coupling coefficients.
    component = torch.cat([torch.full((3,), 0.5), torch.full((3,), -7.0), torch.zeros(3)])
    params = torch.cat([torch.zeros(2), component, component]).view(1, -1, 1, 1).expand(500, -1, 1, 1)
    drawn = mixture.sample(params)
    # Mean 0.5 in [-1, 1] is value 191.25; at the smallest scale a draw still lands one bin off now and then.
    assert (drawn - 191).abs().max() <= 1 and (drawn == 191).float().mean() > 0.8
    coupled = component.clone()
    coupled[6:] = 20.0  # tanh -> 1: G's mean shifts by R's value, B's by R's and G's
    params = torch.cat([torch.zeros(2), coupled, coupled]).view(1, -1, 1, 1).expand(10, -1, 1, 1)
    drawn = mixture.sample(params)
    assert (drawn[:, 0] - 191).abs().max() <= 1 and (drawn[:, 1:] >= 254).all()  # G, B pushed to the top


def test_bits_per_dim_definition() -> None:
    nats = torch.tensor([784 * math.log(2.0)])
    assert bits_per_dim(nats, 784).item() == pytest.approx(1.0)
