"""The probability-flow ODE likelihood of a diffusion model (DDPM, VDM), and the pieces of an ODE likelihood
that flow matching shares with them (ProbeStandardError, ode_pass_cost).

A model mixes in `ProbabilityFlowLikelihood` and provides `probability_flow` (a VPProbabilityFlow of its
noise prediction), `scale` (discrete images to [-1, 1]) and the options `ode_likelihood`, `ode_tolerance` and
`ode_probes` on its cfg (schemas/ddpm.py: ProbabilityFlowOptions). The pixels are dequantized within each
pixel's bin of width w = 2 / (L - 1) around its value in [-1, 1]:
    y = x_scaled + (noise - 1/2) w,  noise ~ U[0, 1)^D,    -log P(x) <= -log p(y) - D ln w   (Jensen)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from gentrain.data.batches import Batch
from gentrain.metrics import bits_per_dim, dequantized_nll_nats
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

    def ode_nll(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Upper bound on -log P(x) in nats (B,) from the probability-flow ODE, the standard error of its
        trace estimate (B,), NFE (B,)."""
        d = self.data
        width = 2.0 / (d.levels - 1)
        y = self.scale(batch.x) + (torch.rand(batch.x.shape, device=batch.x.device) - 0.5) * width
        # fp32 whatever trainer.precision: the solver's error control and the divergence need it
        with torch.autocast(y.device.type, enabled=False):
            result = self.probability_flow.log_likelihood(
                y, solver="adaptive", rtol=self.cfg.ode_tolerance, atol=self.cfg.ode_tolerance,
                probes=self.ode_probes, condition=batch.y if self.conditional else None)
        # u = (x + noise) / L in the unit cube is y's affine image: log p(u) = log p(y) + D ln(L w)
        log_density_u = result.log_prob + d.num_dims * math.log(d.levels * width)
        return dequantized_nll_nats(log_density_u, d.num_dims, d.levels), result.std_error, result.nfe

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
        return (f"test ode_bits_per_dim and ode_nll_nats (final pass): an upper bound on -log P(x) from the "
                f"probability-flow ODE of the noise prediction (Song et al. 2021): uniform dequantization "
                f"within each pixel's bin, y = x + (noise - 1/2) {width}, one noise sample per image, "
                f"-log P(x) <= -log p(y) - D ln({width}); log p(y) of the density at {start}, carried to "
                f"N(0, I) at {end} by the adaptive Dormand-Prince 5(4) solver (rtol = atol = "
                f"{cfg.ode_tolerance}, per image) with {divergence}; ode_*_stderr: the standard error of the "
                f"mean over the images it covers; ode_nfe: the mean network evaluations per image")
