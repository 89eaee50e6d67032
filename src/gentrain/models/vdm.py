"""Variational diffusion models in continuous time (Kingma, Salimans, Poole & Ho, 2021).

z_t = alpha_t x + sigma_t eps with alpha_t^2 = sigmoid(-gamma(t)), sigma_t^2 = sigmoid(gamma(t)) (variance
preserving), gamma(t) = gamma_min + (gamma_max - gamma_min) t the negative log signal-to-noise ratio: linear
in t, with both ends trained by the bound when `learned_schedule` is set (the paper's monotone network for the
shape between them is not implemented; the continuous-time loss does not depend on that shape, only its
variance does). The bound on -log P(x) of the discrete image x (pixels on L levels scaled to [-1, 1]), in
nats:

    decoder    -log p(x | z_0), p(x_i = v_k | z_0) proportional to q(z_0 | v_k), normalised over the L values
    diffusion  0.5 E_t gamma'(t) ||eps - eps_hat(z_t, t)||^2, t ~ U(0, 1): the T -> infinity limit
    prior      KL(q(z_1 | x) || N(0, I))

each estimated with one draw (one network call per image). The U-Net is gentrain/nn/unet.py, told 1000 t.
With model.ode_likelihood=true the test pass also scores the probability-flow ODE likelihood of the same
network (gentrain/models/probability_flow.py), from z_0 at t = 0 to N(0, I) at t = 1.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.errors import ConfigError
from gentrain.metrics import bits_per_dim
from gentrain.models.base import GenerativeModel, LossOutput
from gentrain.models.diffusion_sampling import ancestral_sample, guided_denoiser
from gentrain.models.gaussian_diffusion import GaussianDiffusion, per_image
from gentrain.models.probability_flow import ProbabilityFlowLikelihood
from gentrain.models.schemas.ddpm import Prediction, ReverseVariance, VDMConfig
from gentrain.nn.ode import VPProbabilityFlow
from gentrain.nn.unet import UNet

# How far, in sigma_0, the decoder's normaliser looks from z_0 (see VDM.decoder_term)
DECODER_REACH = 20.0


class VDM(ProbabilityFlowLikelihood, GenerativeModel, config=VDMConfig):
    """A U-Net trained on the continuous-time variational bound; likelihood: that bound, estimated (and
    optionally the probability-flow ODE's)."""

    progress_terms = ("bits_per_dim",)
    standard_errors = ("bits_per_dim", "nll_nats", "ode_bits_per_dim", "ode_nll_nats")

    def __init__(self, cfg: VDMConfig, data: DataInfo):
        super().__init__(data)
        if data.height != data.width:
            raise ConfigError(f"model=vdm takes square images, got {data.height}x{data.width}: set "
                              f"dataset.image_size")
        self.cfg = cfg
        self.conditional = cfg.conditional
        num_classes = self.require_classes(data) if cfg.conditional else None
        try:
            self.net = UNet(data.channels, data.channels, data.height, cfg.base_channels,
                            tuple(cfg.channel_mult), cfg.num_res_blocks, tuple(cfg.attention_resolutions),
                            cfg.dropout, num_classes, cfg.attention_heads,
                            input_fourier_exponents=(7, 8) if cfg.fourier_features else ())
        except ValueError as err:
            raise ConfigError(f"model=vdm: {err} (model.base_channels, model.attention_heads)") from None
        ends = torch.tensor([cfg.gamma_min, cfg.gamma_max])
        if cfg.learned_schedule:
            self.gamma_ends = torch.nn.Parameter(ends)
        else:
            self.register_buffer("gamma_ends", ends)
        self.register_buffer("values", torch.linspace(-1, 1, data.levels), persistent=False)

    def scale(self, x: Tensor) -> Tensor:
        return x.float() * (2.0 / (self.data.levels - 1)) - 1.0

    def gamma(self, t: Tensor) -> Tensor:
        low, high = self.gamma_ends[0], self.gamma_ends[1]
        return low + (high - low) * t

    @staticmethod
    def alpha_sigma(gamma: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (-1, *([1] * (like.ndim - 1)))
        return torch.sigmoid(-gamma).sqrt().view(shape), torch.sigmoid(gamma).sqrt().view(shape)

    # --- the bound's terms, in nats per image ---------------------------------------------------------------
    def predict(self, z: Tensor, steps: Tensor, labels: Optional[Tensor]) -> tuple[Tensor, None]:
        """The noise prediction at the network's time inputs steps = 1000 t (and no variance fraction)."""
        return self.net(z, steps.float(), labels).to(z.dtype), None

    def eps_hat(self, z: Tensor, t: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """The network's noise prediction at times t (B,) in [0, 1]."""
        return self.predict(z, 1000 * t, labels)[0]

    def diffusion_term(self, x0: Tensor, z_t: Tensor, t: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """0.5 gamma'(t) ||eps - eps_hat(z_t, t)||^2 for given z_t: the integrand of the diffusion loss."""
        alpha, sigma = self.alpha_sigma(self.gamma(t), z_t)
        eps = (z_t - alpha * x0) / sigma
        eps_hat = self.eps_hat(z_t, t, labels)
        slope = self.gamma_ends[1] - self.gamma_ends[0]
        return 0.5 * slope * per_image((eps - eps_hat) ** 2)

    def decoder_term(self, x0: Tensor, z0: Tensor) -> Tensor:
        """-log p(x | z_0) with p(x_i = v_k | z_0) proportional to N(z_0; alpha_0 v_k, sigma_0^2).

        The normaliser sums over the values within DECODER_REACH sigma_0 of the one nearest z_0 / alpha_0
        (all L when that reaches them all): the others add less than exp(-DECODER_REACH^2 / 2) = 1e-87 of the
        largest term, below float64's resolution. Leaving them out took the bound's forward and backward
        pass at the paper's gamma_min from 3.1 to 0.7 s for 32 CIFAR-10 images on one thread (the U-Net of
        cpu_vdm_cifar10)."""
        alpha, sigma = self.alpha_sigma(self.gamma_ends[0].expand(len(z0)), z0)
        levels = self.data.levels
        spacing = alpha * (2.0 / (levels - 1))  # between the means alpha v_k of neighbouring values
        # one host sync (the trainer syncs every step anyway); shapes only on the meta device: all values
        if z0.is_meta:
            reach = levels
        else:
            reach = math.ceil(float((DECODER_REACH * sigma / spacing).detach().max())) + 1
        values = self.values.to(z0.dtype)
        observed = values[((x0 + 1) * (levels - 1) / 2).round().long()]  # x0 on the grid of the normaliser
        chosen = -0.5 * ((z0 - alpha * observed) / sigma) ** 2
        if 2 * reach + 1 >= levels:
            near, valid = values, None
        else:
            nearest = ((z0 / alpha + 1) / 2 * (levels - 1)).detach().round().long()
            index = nearest[..., None] + torch.arange(-reach, reach + 1, device=z0.device)
            valid = (index >= 0) & (index < levels)
            near = values[index.clamp(0, levels - 1)]
        logits = -0.5 * ((z0[..., None] - alpha[..., None] * near) / sigma[..., None]) ** 2
        if valid is not None:
            logits = logits.masked_fill(~valid, -math.inf)
        return per_image(torch.logsumexp(logits, -1) - chosen)

    def prior_term(self, x0: Tensor) -> Tensor:
        """KL(N(alpha_1 x, sigma_1^2) || N(0, 1)), summed over the pixels."""
        alpha, sigma = self.alpha_sigma(self.gamma_ends[1].expand(len(x0)), x0)
        variance = sigma ** 2
        return per_image(0.5 * (variance + (alpha * x0) ** 2 - torch.log(variance) - 1))

    def bound(self, x0: Tensor, t: Tensor, labels: Optional[Tensor] = None) -> dict[str, Tensor]:
        """The three terms for one draw of t (B,) and of the noise, and their sum, each (B,)."""
        alpha, sigma = self.alpha_sigma(self.gamma(t), x0)
        z_t = alpha * x0 + sigma * torch.randn_like(x0)
        alpha_0, sigma_0 = self.alpha_sigma(self.gamma_ends[0].expand(len(x0)), x0)
        z0 = alpha_0 * x0 + sigma_0 * torch.randn_like(x0)
        terms = {"decoder_nats": self.decoder_term(x0, z0), "diffusion_nats": self.diffusion_term(x0, z_t, t, labels),
                 "prior_nats": self.prior_term(x0)}
        terms["nll_nats"] = terms["decoder_nats"] + terms["diffusion_nats"] + terms["prior_nats"]
        return terms

    # --- training and evaluation ----------------------------------------------------------------------------
    def loss(self, batch: Batch, step: int) -> LossOutput:
        x0 = self.scale(batch.x)
        n = x0.shape[0]
        # evenly spread times with one random offset (the paper's low-discrepancy sampler): each t is still
        # uniform, so the batch mean stays unbiased, with less variance
        t = (torch.rand(1, device=x0.device) + torch.arange(n, device=x0.device) / n) % 1.0
        labels = self.net.drop_labels(batch.y, self.cfg.label_dropout) if self.conditional else None
        terms = self.bound(x0, t, labels)
        bpd = bits_per_dim(terms["nll_nats"], self.data.num_dims).mean()
        logs = {"bits_per_dim": bpd.detach()}
        if self.cfg.learned_schedule:
            logs.update(gamma_min=self.gamma_ends[0].detach(), gamma_max=self.gamma_ends[1].detach())
        return LossOutput(bpd, logs)

    # --- the probability-flow ODE likelihood ---------------------------------------------------------------
    @property
    def probability_flow(self) -> VPProbabilityFlow:
        low, high = (float(v) for v in self.gamma_ends.detach().double())

        def schedule(t: Tensor) -> tuple[Tensor, Tensor]:
            # log alpha^2 = log sigmoid(-gamma), and its slope -sigmoid(gamma) gamma'(t)
            gamma = low + (high - low) * t.double()
            return torch.nn.functional.logsigmoid(-gamma), -torch.sigmoid(gamma) * (high - low)

        return VPProbabilityFlow(self.eps_hat, schedule, 0.0, 1.0)

    def evaluation_text(self, final: bool) -> str:
        ode = final and self.cfg.ode_likelihood
        return "continuous-time bound, sampled t" + (" and the probability-flow ODE likelihood" if ode else "")

    @property
    def final_cost(self) -> float:
        return 1.0 + self.ode_cost

    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, Tensor]:
        x0 = self.scale(batch.x)
        terms = self.bound(x0, torch.rand(x0.shape[0], device=x0.device), batch.y if self.conditional else None)
        terms["bits_per_dim"] = bits_per_dim(terms["nll_nats"], self.data.num_dims)
        return terms | (self.ode_metrics(batch) if final else {})

    def metric_notes(self) -> list[str]:
        d = self.data
        low, high = (float(v) for v in self.gamma_ends.detach())
        schedule = "learned ends" if self.cfg.learned_schedule else "fixed"
        return [
            f"bits_per_dim and nll_nats: the continuous-time variational bound (Kingma et al. 2021) on "
            f"-log P(x) of the discrete {d.levels}-level images scaled to [-1, 1], nats per image and "
            f"nats / (D ln 2), D = {d.num_dims}: decoder_nats (-log p(x|z_0), p(x_i = v_k | z_0) "
            f"proportional to N(z_0; alpha_0 v_k, sigma_0^2) over the {d.levels} values) + diffusion_nats "
            f"(0.5 gamma'(t) ||eps - eps_hat||^2 at one t ~ U(0, 1)) + prior_nats (KL(q(z_1|x) || N(0, I))); "
            f"gamma linear "
            f"in t from {low:.3f} to {high:.3f} ({schedule}); one draw of t and of the noise per image: an "
            f"unbiased estimate; *_stderr: the standard error of the mean over the images"
            + (", conditioned on the label (no guidance)" if self.conditional else ""),
        ] + ([self.ode_note(f"t = 0 (gamma = {low:.3f})", "t = 1")] if self.cfg.ode_likelihood else []) + [
            f"samples: ancestral, {self.cfg.sampling_steps} steps on a uniform grid of t"
            + (f", guidance scale {self.cfg.guidance_scale}" if self.conditional else ""),
        ]

    # --- sampling -------------------------------------------------------------------------------------------
    def draw(self, n: int, labels: Optional[Tensor], generator: Optional[torch.Generator],
             temperature: Optional[float]) -> Tensor:
        """Ancestral sampling through q(z_s | z_t, x = x_hat) on S times 1/S, ..., 1, then x_hat rounded."""
        steps = self.cfg.sampling_steps
        times = torch.arange(1, steps + 1, dtype=torch.float64) / steps
        with torch.no_grad():
            gammas = self.gamma(times.to(self.gamma_ends)).double().cpu()
        chain = GaussianDiffusion(torch.sigmoid(-gammas), Prediction.eps, ReverseVariance.fixed_small,
                                  self.data.levels, steps=1000 * times)
        denoiser = guided_denoiser(self.predict, chain, labels, self.cfg.guidance_scale,
                                   self.net.null_label if self.conditional else None, self.device)
        shape = (n, self.data.channels, self.data.height, self.data.width)
        x = ancestral_sample(denoiser, chain, shape, clip=self.cfg.clip_denoised, generator=generator,
                             device=self.device, dtype=next(self.parameters()).dtype)
        levels = self.data.levels
        return ((x.clamp(-1, 1) + 1) / 2 * (levels - 1)).round() / (levels - 1)
