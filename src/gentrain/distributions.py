"""Discrete likelihoods over pixel values, shared by every model that outputs a pixel distribution.

Images arrive as integers in [0, levels) (levels = 256 for 8-bit data, 2 for binarized data). Each likelihood
maps a parameter tensor `(B, P, H, W)` from a network to an exact discrete log-probability of those integers,
summed over every sub-pixel, in nats. Because the probabilities are exact (they sum to one over the `levels`
values), bits/dim computed from them is an honest number on the discrete data: a likelihood that puts equal
mass on all 256 values scores exactly 8 bits/dim.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor


class PixelLikelihood(ABC):
    """A distribution over integer images `(B, C, H, W)` with values in [0, levels)."""

    def __init__(self, levels: int, channels: int):
        self.levels = levels
        self.channels = channels

    @property
    @abstractmethod
    def num_params(self) -> int:
        """Parameter channels P a network must output per pixel."""

    @abstractmethod
    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x) in nats per image, shape (B,); `x` holds integers in [0, levels)."""

    @abstractmethod
    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Integer images (B, C, H, W) drawn from the distribution."""

    @abstractmethod
    def mean(self, params: Tensor) -> Tensor:
        """The distribution's mean image, scaled to [0, 1] (for display)."""

    def _scaled(self, x: Tensor) -> Tensor:
        """Integers [0, levels) -> floats in [-1, 1]."""
        return x.float() * (2.0 / (self.levels - 1)) - 1.0


def _uniform(shape, like: Tensor, generator: torch.Generator | None, eps: float = 1e-5) -> Tensor:
    return torch.rand(shape, generator=generator, device=like.device).clamp_(eps, 1.0 - eps)


class Bernoulli(PixelLikelihood):
    """One logit per sub-pixel, for binarized images (levels == 2)."""

    def __init__(self, levels: int, channels: int):
        if levels != 2:
            raise ValueError("a Bernoulli likelihood needs binarized data (2 levels)")
        super().__init__(levels, channels)

    @property
    def num_params(self) -> int:
        return self.channels

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        nll = F.binary_cross_entropy_with_logits(params.float(), x.float(), reduction="none")
        return -nll.flatten(1).sum(1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(params.shape, generator=generator, device=params.device)
        return (u < torch.sigmoid(params.float())).long()

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params.float())


class Categorical(PixelLikelihood):
    """A softmax over all `levels` values per sub-pixel.

    Parameters are laid out channel-major: (B, C*L, H, W)."""

    @property
    def num_params(self) -> int:
        return self.channels * self.levels

    def _log_probs(self, params: Tensor) -> Tensor:
        b, _, h, w = params.shape
        return F.log_softmax(params.float().view(b, -1, self.levels, h, w), dim=2)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logp = self._log_probs(params).gather(2, x.long().unsqueeze(2)).squeeze(2)
        return logp.flatten(1).sum(1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        logp = self._log_probs(params)
        gumbel = -torch.log(-torch.log(_uniform(logp.shape, logp, generator)))
        return (logp + gumbel).argmax(2)

    def mean(self, params: Tensor) -> Tensor:
        values = torch.arange(self.levels, device=params.device, dtype=torch.float32) / (self.levels - 1)
        return (self._log_probs(params).exp() * values.view(1, 1, -1, 1, 1)).sum(2)


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """Elementwise log P(x) of a logistic discretized into `levels` bins on [-1, 1].

    `x` is the bin centre in [-1, 1]; the lowest and highest bins take the tails, so the probabilities of all
    `levels` values sum to one exactly. Differences of sigmoids are taken on the side of the mean where they
    do not cancel, and only bins with mass below 1e-5 fall back to density times bin width (PixelCNN++).
    """
    half_bin = 1.0 / (levels - 1)
    centered = x - mean
    inv_scale = torch.exp(-log_scale)
    plus_in = inv_scale * (centered + half_bin)
    min_in = inv_scale * (centered - half_bin)
    mid_in = inv_scale * centered
    lowest = x < -1.0 + half_bin
    edge = lowest | (x > 1.0 - half_bin)
    # The tails in one pass: log P(X <= x + half) for the lowest bin, log P(X > x - half) for the highest.
    log_edge = F.logsigmoid(torch.where(lowest, plus_in, -min_in))
    # sigmoid(plus) - sigmoid(min), or above the mean sigmoid(-min) - sigmoid(-plus): flipping the signs
    # computes the same differences with two sigmoids instead of four (the abs undoes the flip's sign).
    flip = torch.where(mid_in > 0, -1.0, 1.0)
    cdf_delta = (torch.sigmoid(flip * plus_in) - torch.sigmoid(flip * min_in)).abs()
    log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in)
    log_prob_mid = torch.where(
        cdf_delta > 1e-5,
        torch.log(cdf_delta.clamp_min(1e-12)),
        log_pdf_mid + math.log(2.0 * half_bin),
    )
    return torch.where(edge, log_edge, log_prob_mid)


def _quantize(x: Tensor, levels: int) -> Tensor:
    """Continuous values in [-1, 1] -> the nearest of `levels` integers."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * ((levels - 1) / 2.0)).round().long()


class DiscretizedLogistic(PixelLikelihood):
    """A single discretized logistic per sub-pixel. Parameters: (B, 2C, H, W) = means, log-scales."""

    min_log_scale = -7.0

    @property
    def num_params(self) -> int:
        return 2 * self.channels

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_scale = params.float().chunk(2, dim=1)
        return mean, log_scale.clamp_min(self.min_log_scale)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_scale = self._split(params)
        return discretized_logistic_log_prob(self._scaled(x), mean, log_scale, self.levels).flatten(1).sum(1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean, log_scale = self._split(params)
        u = _uniform(mean.shape, mean, generator)
        return _quantize(mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u)), self.levels)

    def mean(self, params: Tensor) -> Tensor:
        return (self._split(params)[0].clamp(-1.0, 1.0) + 1.0) / 2.0


class DiscretizedLogisticMixture(PixelLikelihood):
    """PixelCNN++'s mixture of discretized logistics, shared by the channels of a pixel.

    For C channels and K components the parameters are (B, K * (1 + 2C + C(C-1)/2), H, W): mixture logits,
    then per component C means, C log-scales and the C(C-1)/2 coefficients that make channel c's mean depend
    linearly on the channels before it (for RGB: G on R; B on R and G). The dependence is on the observed
    (or, when sampling, already drawn) values of the same pixel, so the network itself never sees them.
    """

    min_log_scale = -7.0

    def __init__(self, levels: int, channels: int, num_mixtures: int = 10):
        super().__init__(levels, channels)
        self.num_mixtures = num_mixtures

    @property
    def num_params(self) -> int:
        c = self.channels
        return self.num_mixtures * (1 + 2 * c + c * (c - 1) // 2)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> logits (B,K,H,W), means (B,K,C,H,W), log-scales (B,K,C,H,W), coeffs (B,K,C(C-1)/2,H,W)."""
        b, _, h, w = params.shape
        k, channels = self.num_mixtures, self.channels
        params = params.float()
        logits = params[:, :k]
        rest = params[:, k:].reshape(b, k, -1, h, w)
        means = rest[:, :, :channels]
        log_scales = rest[:, :, channels : 2 * channels].clamp_min(self.min_log_scale)
        coeffs = torch.tanh(rest[:, :, 2 * channels :])
        return logits, means, log_scales, coeffs

    @staticmethod
    def _coupled_means(means: Tensor, coeffs: Tensor, x: Tensor) -> Tensor:
        """Channel c's mean plus sum_{j<c} coeff[c, j] * x_j, for x (B, 1, C, H, W) in [-1, 1]."""
        channels = means.shape[2]
        out = [means[:, :, 0]]
        index = 0
        for c in range(1, channels):
            shift = sum(coeffs[:, :, index + j] * x[:, :, j] for j in range(c))
            out.append(means[:, :, c] + shift)
            index += c
        return torch.stack(out, dim=2)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logits, means, log_scales, coeffs = self._split(params)
        xs = self._scaled(x).unsqueeze(1)  # (B, 1, C, H, W)
        coupled = self._coupled_means(means, coeffs, xs)
        per_channel = discretized_logistic_log_prob(xs, coupled, log_scales, self.levels)
        per_pixel = torch.logsumexp(per_channel.sum(2) + F.log_softmax(logits, dim=1), dim=1)  # (B, H, W)
        return per_pixel.flatten(1).sum(1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        logits, means, log_scales, coeffs = self._split(params)
        gumbel = -torch.log(-torch.log(_uniform(logits.shape, logits, generator)))
        component = (logits + gumbel).argmax(1, keepdim=True)  # (B, 1, H, W)

        def pick(t: Tensor) -> Tensor:  # (B, K, C', H, W) -> (B, C', H, W) of the chosen component
            index = component.unsqueeze(2).expand(-1, 1, t.shape[2], -1, -1)
            return t.gather(1, index).squeeze(1)

        mean, log_scale, coeff = pick(means), pick(log_scales), pick(coeffs)
        channels = self.channels
        u = _uniform(mean.shape, mean, generator)
        noise = torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        drawn: list[Tensor] = []  # integer channels drawn so far
        index = 0
        for c in range(channels):
            shift = sum(coeff[:, index + j] * self._scaled(drawn[j]) for j in range(c)) if c else 0.0
            index += c
            drawn.append(_quantize(mean[:, c] + shift + noise[:, c], self.levels))
        return torch.stack(drawn, dim=1)

    def mean(self, params: Tensor) -> Tensor:
        logits, means, _, coeffs = self._split(params)
        weights = F.softmax(logits, dim=1).unsqueeze(2)
        channels = means.shape[2]
        # Couple each component's channels through its own mean values.
        xs = torch.zeros_like(means)
        for c in range(channels):
            xs[:, :, c] = self._coupled_means(means, coeffs, xs)[:, :, c].clamp(-1.0, 1.0)
        return ((weights * xs).sum(1) + 1.0) / 2.0
