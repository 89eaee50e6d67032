"""The probability-flow ODE likelihood of a diffusion model (DDPM, VDM), and the pieces of an ODE likelihood
that flow matching shares with them (ProbeStandardError, ode_pass_cost).

A model mixes in `ProbabilityFlowLikelihood` and provides `probability_flow` (a VPProbabilityFlow of its
noise prediction), `scale` (discrete images to [-1, 1]) and the options `ode_likelihood`, `ode_tolerance` and
`ode_probes` on its cfg (schemas/ddpm.py: ProbabilityFlowOptions). Each image x (in [-1, 1], bins of width
w = 2 / (L - 1)) is dequantized: y ~ q(y | x), a density on a cell around x, the cells of different x
disjoint, so that P(x) = the model's mass on x's cell >= exp E_q[log p(y) - log q(y | x)] (Jensen):
    uniform:           y = x + (noise - 1/2) w, noise ~ U[0, 1)^D;      log q = -D ln w
    truncated_normal:  y = alpha x + sigma e, e ~ N(0, I) truncated to |e_i| <= a = alpha w / (2 sigma), with
                       alpha, sigma of the ODE's first noise level (Zheng et al. 2023): the cells are the bins
                       scaled by alpha, and log q = log N(y; alpha x, sigma^2 I) - D ln(1 - 2 Phi(-a)).
Where sigma is well below w (VDM's gamma_min = -13.3: sigma / w = 0.17) the model's density at the first level
is nearly a Gaussian bump on each value, which uniform noise fits badly (0.65 nats per dimension for exact
bumps of that width) and the truncated normal within -ln(1 - 2 Phi(-a)) (0.0025 nats).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from gentrain.data.batches import Batch
from gentrain.metrics import bits_per_dim
from gentrain.models.schemas.ddpm import Dequantization
from gentrain.models.schemas.flow_matching import EXACT_DIVERGENCE_MAX_DIMS
from gentrain.nn.ode import VPProbabilityFlow

# What a diffusion model's adaptive probability-flow solve is assumed to cost when a run sizes its end-of-run
# pass (as nn/ode.py's ADAPTIVE_NFE_ESTIMATE for flow matching, whose straighter paths take ~300): measured
# 506 NFE per image for cpu_ddpm_mnist and 475 for cpu_ddpm_cifar10 at rtol = atol = 1e-5
PROBABILITY_FLOW_NFE_ESTIMATE = 500



def ode_pass_cost(nfe: float, probes: Optional[int], num_dims: int) -> float:
    """An ODE likelihood per image in training images' work: per NFE a forward pass and a reverse pass (about
    two forwards) per probe, or per dimension for the exact divergence, against a training image's three."""
    return nfe * (1 + 2 * (num_dims if probes is None else probes)) / 3


class ProbeStandardError:
    """summarize() for a GenerativeModel whose ODE bound carries each image's Hutchinson variance as
    <likelihood_prefix>bits_per_dim_probe_var: reported as the root mean square of the images' standard errors,
    <likelihood_prefix>bits_per_dim_probe_se."""

    likelihood_prefix = "ode_"

    def summarize(self, means: dict[str, Tensor]) -> dict[str, float]:
        variance = f"{self.likelihood_prefix}bits_per_dim_probe_var"
        metrics = super().summarize({k: v for k, v in means.items() if k != variance})
        if variance in means:
            metrics[f"{self.likelihood_prefix}bits_per_dim_probe_se"] = float(means[variance].sqrt())
        return metrics


class ProbabilityFlowLikelihood(ProbeStandardError):
    """ode_* metrics of the end-of-run test pass, their cost and their note, for a GenerativeModel."""

    @property
    def probability_flow(self) -> VPProbabilityFlow:
        raise NotImplementedError

    @property
    def ode_probes(self) -> Optional[int]:
        """None (the exact divergence) for small images, else the number of Hutchinson probes."""
        return None if self.data.num_dims <= EXACT_DIVERGENCE_MAX_DIMS else self.cfg.ode_probes

    @property
    def first_level(self) -> tuple[float, float, float]:
        """alpha and sigma of the ODE's first noise level, where the density of y is evaluated, and the
        half-width a of a pixel's cell (its bin scaled by alpha) in units of sigma."""
        flow = self.probability_flow
        log_alpha_bar = float(flow.schedule(torch.tensor([flow.t_data], dtype=torch.float64))[0])
        alpha, sigma = math.exp(0.5 * log_alpha_bar), math.sqrt(-math.expm1(log_alpha_bar))
        return alpha, sigma, alpha / (self.data.levels - 1) / sigma

    def dequantize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """y ~ q(y | x) for the images x (B, C, H, W) and log q(y | x) (B,), both float64 (see the module's
        doc)."""
        d = self.data
        width, centre = 2.0 / (d.levels - 1), self.scale(x).double()
        noise = torch.rand(x.shape, device=x.device).double()  # float32 draws: the same as earlier versions
        if self.cfg.ode_dequantization is Dequantization.uniform:
            return centre + (noise - 0.5) * width, centre.new_full(x.shape[:1], -d.num_dims * math.log(width))
        alpha, sigma, a = self.first_level
        tail = float(torch.special.ndtr(torch.tensor(-a, dtype=torch.float64)))
        # the inverse CDF; the clamp keeps noise = 0 (ndtri: -inf) in the cell
        e = torch.special.ndtri(tail + noise * (1 - 2 * tail)).clamp(-a, a)
        log_q = ((-0.5 * e.square()).flatten(1).sum(1)
                 - d.num_dims * (0.5 * math.log(2 * math.pi) + math.log(sigma) + math.log1p(-2 * tail)))
        return alpha * centre + sigma * e, log_q

    def ode_nll(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Upper bound on -log P(x) in nats (B,) from the probability-flow ODE, the standard error of its
        trace estimate (B,), NFE (B,)."""
        y, log_q = self.dequantize(batch.x)
        # fp32 whatever trainer.precision: the solver's error control and the divergence need it
        with torch.autocast(y.device.type, enabled=False):
            result = self.probability_flow.log_likelihood(
                y.float(), solver="adaptive", rtol=self.cfg.ode_tolerance,
                atol=self.cfg.ode_tolerance, probes=self.ode_probes,
                condition=batch.y if self.conditional else None)
        return (log_q - result.log_prob.double()).to(result.log_prob.dtype), result.std_error, result.nfe

    def ode_metrics(self, batch: Batch) -> dict[str, Tensor]:
        """The per-image ode_* metrics of one test batch (empty when model.ode_likelihood is off)."""
        if not self.cfg.ode_likelihood:
            return {}
        nll, std_error, nfe = self.ode_nll(batch)
        out = {"ode_nll_nats": nll, "ode_bits_per_dim": bits_per_dim(nll, self.data.num_dims),
               "ode_nfe": nfe.float()}
        if self.ode_probes is not None:
            out["ode_bits_per_dim_probe_var"] = bits_per_dim(std_error, self.data.num_dims).pow(2)
        return out

    @property
    def ode_cost(self) -> float:
        """The ODE pass per image in training images' work (0 when off)."""
        if not self.cfg.ode_likelihood:
            return 0.0
        return ode_pass_cost(PROBABILITY_FLOW_NFE_ESTIMATE, self.ode_probes, self.data.num_dims)

    def ode_note(self, start: str, end: str) -> str:
        """The note of the ode_* metrics; `start` and `end` name the ODE's ends (first noise level, prior)."""
        d, cfg = self.data, self.cfg
        divergence = ("the exact divergence" if self.ode_probes is None else
                      f"Hutchinson's divergence estimate with {cfg.ode_probes} Rademacher probes per image "
                      f"(ode_bits_per_dim_probe_se: the root mean square of the images' standard errors)")
        width = f"2/{d.levels - 1}"
        if cfg.ode_dequantization is Dequantization.uniform:
            dequantization = (f"uniform dequantization within each pixel's bin, y = x + (noise - 1/2) "
                              f"{width}, one noise sample per image, -log P(x) <= -log p(y) - D ln({width})")
        else:
            alpha, sigma, a = self.first_level
            dequantization = (
                f"truncated-normal dequantization (Zheng et al. 2023), y = alpha x + sigma e with alpha = "
                f"{alpha:.6g}, sigma = {sigma:.4g} of the first noise level and e ~ N(0, I) truncated to "
                f"|e_i| <= alpha {width} / (2 sigma) = {a:.4g}, one sample per "
                f"image, -log P(x) <= -log p(y) + log q(y | x) (P(x): the mass on x's bin scaled by alpha)")
        return (f"test ode_bits_per_dim and ode_nll_nats (final pass): an upper bound on -log P(x) from the "
                f"probability-flow ODE of the noise prediction (Song et al. 2021): {dequantization}; "
                f"log p(y) of the density at {start}, carried to "
                f"N(0, I) at {end} by the adaptive Dormand-Prince 5(4) solver (rtol = atol = "
                f"{cfg.ode_tolerance}, per image) with {divergence}; ode_*_stderr: the standard error of the "
                f"mean over the images it covers; ode_nfe: the mean network evaluations per image")
