"""Denoising diffusion probabilistic models (Ho et al. 2020), with improved DDPM's options (Nichol &
Dhariwal 2021): eps / x0 / v prediction, linear or cosine noise schedules, L_simple or the hybrid objective
with learned variances, ancestral and DDIM sampling (Song et al. 2021), and a class-conditional variant with
classifier-free guidance (Ho & Salimans 2022).

The network is gentrain/nn/unet.py; the process and the bound's terms gentrain/models/gaussian_diffusion.py;
the samplers gentrain/models/diffusion_sampling.py. The reported likelihood is the discrete-data variational
bound with every term (the discretized decoder, the T - 1 diffusion KLs and the prior term), an upper bound on
-log P(x) of the 8-bit (or binarized) images: see metric_notes(). With model.ode_likelihood=true the test
pass also scores the probability-flow ODE likelihood (gentrain/models/probability_flow.py, shared with VDM).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.errors import ConfigError
from gentrain.metrics import bits_per_dim
from gentrain.models.base import GenerativeModel, LossOutput
from gentrain.models.diffusion_sampling import Denoiser, ancestral_sample, ddim_sample, guided_denoiser
from gentrain.models.gaussian_diffusion import GaussianDiffusion, alpha_bar_of
from gentrain.models.schemas.ddpm import DDPMConfig, Objective, Prediction, ReverseVariance, Sampler
from gentrain.models.probability_flow import ProbabilityFlowLikelihood
from gentrain.nn.ode import VPProbabilityFlow
from gentrain.nn.unet import UNet


class DDPM(ProbabilityFlowLikelihood, GenerativeModel, config=DDPMConfig):
    """A U-Net trained to denoise, sampled by reversing the noising process; likelihood: the variational
    bound."""

    progress_terms = ("mse", "bits_per_dim")
    # the sampled-t bound and the dequantized ODE likelihood are estimates: say how good
    standard_errors = ("bits_per_dim", "nll_nats", "ode_bits_per_dim", "ode_nll_nats")

    def __init__(self, cfg: DDPMConfig, data: DataInfo):
        super().__init__(data)
        self.cfg = cfg
        self.conditional = cfg.conditional
        num_classes = self.require_classes(data) if cfg.conditional else None
        if data.height != data.width:
            raise ConfigError(f"model=ddpm takes square images, got {data.height}x{data.width}: set "
                              f"dataset.image_size")
        self.learned_variance = cfg.variance is ReverseVariance.learned
        out_channels = data.channels * (2 if self.learned_variance else 1)
        try:
            self.net = UNet(data.channels, out_channels, data.height, cfg.base_channels,
                            tuple(cfg.channel_mult), cfg.num_res_blocks, tuple(cfg.attention_resolutions),
                            cfg.dropout, num_classes, cfg.attention_heads)
        except ValueError as err:
            raise ConfigError(f"model=ddpm: {err} (model.base_channels, model.attention_heads)") from None
        alpha_bar = alpha_bar_of(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end, cfg.cosine_offset)
        self.diffusion = GaussianDiffusion(alpha_bar, cfg.prediction, cfg.variance, data.levels)

    @property
    def timesteps(self) -> int:
        return self.cfg.timesteps

    def scale(self, x: Tensor) -> Tensor:
        """Pixel values 0..L-1 -> [-1, 1]: 2 / (L - 1) apart, the bin width of the discretized decoder."""
        return x.float() * (2.0 / (self.data.levels - 1)) - 1.0

    # --- the network as a denoiser --------------------------------------------------------------------------
    def predict(self, x_t: Tensor, steps: Tensor,
                labels: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """The network's prediction (eps, x0 or v) and, with learned variances, the interpolation fraction in
        [0, 1] for (v + 1) / 2 of its raw output v (Nichol & Dhariwal)."""
        out = self.net(x_t, steps.float(), labels)
        if not self.learned_variance:
            return out, None
        prediction, raw = out.chunk(2, dim=1)
        return prediction, (raw + 1) / 2

    def denoiser(self, chain: GaussianDiffusion, labels: Optional[Tensor]) -> Denoiser:
        """(x_t, positions in `chain`) -> (x_0, eps, fraction), guided when the model is conditional."""
        null = self.net.null_label if self.conditional else None
        return guided_denoiser(self.predict, chain, labels, self.cfg.guidance_scale, null, self.device)

    # --- training -------------------------------------------------------------------------------------------
    def loss(self, batch: Batch, step: int) -> LossOutput:
        x0 = self.scale(batch.x)
        labels = batch.y
        if self.conditional:
            labels = self.net.drop_labels(labels, self.cfg.label_dropout)
        # The bound's term at the same t costs no network call: an unbiased per-step estimate of the bound.
        # Through the variances only (the mean detached), as improved DDPM trains them.
        mse, term = self.sampled_terms(x0, labels, detach_mean=True)
        mse = mse.mean()
        bound = self.diffusion.prior_term(x0) + self.timesteps * term
        bpd = bits_per_dim(bound.detach(), self.data.num_dims).mean()
        logs = {"mse": mse.detach(), "bits_per_dim": bpd}
        if self.cfg.objective is Objective.simple:
            return LossOutput(mse, logs)
        # L_vlb in bits/dim estimated as T L_t, weighted by lambda (Nichol & Dhariwal's eq. 16)
        vlb = bits_per_dim(self.timesteps * term, self.data.num_dims).mean()
        loss = mse + self.cfg.vlb_weight * vlb
        return LossOutput(loss, {**logs, "loss": loss.detach()})

    def sampled_terms(self, x0: Tensor, labels: Optional[Tensor], *,
                      detach_mean: bool = False) -> tuple[Tensor, Tensor]:
        """One t uniform on 1..T and one noise draw per image, one network call: the squared error per
        dimension of the prediction (L_simple's) and the bound's term of that step in nats, (B,) each.
        detach_mean: the term reaches the network through the variances only."""
        i = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.diffusion.noisy(x0, i, noise)
        prediction, fraction = self.predict(x_t, i, labels)
        prediction = prediction.to(x_t.dtype)
        mse = (prediction - self.diffusion.target(x0, noise, i)).pow(2).flatten(1).mean(1)
        x0_estimate, _ = self.diffusion.x0_and_eps(prediction.detach() if detach_mean else prediction, x_t, i)
        return mse, self.bound_term(x0, x_t, i, x0_estimate, fraction)

    def bound_term(self, x0: Tensor, x_t: Tensor, i: Tensor, x0_estimate: Tensor,
                   fraction: Optional[Tensor]) -> Tensor:
        log_var = self.diffusion.reverse_log_var(i, x_t, None if fraction is None else fraction.to(x_t.dtype))
        return self.diffusion.vlb_term(x0, x_t, i, x0_estimate, log_var)

    # --- the bound ------------------------------------------------------------------------------------------
    def term_at(self, x0: Tensor, i: Tensor, labels: Optional[Tensor]) -> Tensor:
        """The bound's term of step i + 1 for each image (one network call), in nats, (B,)."""
        return self.term_given(x0, self.diffusion.noisy(x0, i, torch.randn_like(x0)), i, labels)

    def term_given(self, x0: Tensor, x_t: Tensor, i: Tensor, labels: Optional[Tensor]) -> Tensor:
        """The same for given x_t: the term's integrand (tests integrate it over x_t exactly)."""
        prediction, fraction = self.predict(x_t, i, labels)
        x0_estimate, _ = self.diffusion.x0_and_eps(prediction.to(x_t.dtype), x_t, i)
        return self.bound_term(x0, x_t, i, x0_estimate, fraction)

    def sampled_bound(self, x0: Tensor, labels: Optional[Tensor]) -> dict[str, Tensor]:
        """L_T + T L_{t-1} with t uniform on 1..T for each image, an unbiased estimate of the bound, and the
        squared error of the same network call (L_simple, the training loss), (B,) each."""
        mse, term = self.sampled_terms(x0, labels)
        return {"nll_nats": self.diffusion.prior_term(x0) + self.timesteps * term, "mse": mse}

    def full_bound(self, x0: Tensor, labels: Optional[Tensor]) -> dict[str, Tensor]:
        """Every term, one network call per step and image: decoder, diffusion (L_1 + ... + L_{T-1}),
        prior."""
        diffusion = torch.zeros(x0.shape[0], device=x0.device)
        for step in range(self.timesteps - 1, -1, -1):
            term = self.term_at(x0, torch.full((x0.shape[0],), step, device=x0.device), labels)
            if step == 0:
                decoder = term
            else:
                diffusion = diffusion + term
        prior = self.diffusion.prior_term(x0)
        return {"decoder_nats": decoder, "diffusion_nats": diffusion, "prior_nats": prior,
                "nll_nats": decoder + diffusion + prior}

    # --- the probability-flow ODE likelihood ---------------------------------------------------------------
    def noise_prediction(self, x: Tensor, s: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """eps(x, s) at continuous step indices s (B,), whatever the network predicts, from
        a = sqrt(alpha_bar(s)), sigma = sqrt(1 - a^2): eps = (x - a x0) / sigma, or eps = sigma x + a v."""
        prediction = self.predict(x, s, labels)[0].to(x.dtype)
        if self.cfg.prediction is Prediction.eps:
            return prediction
        alpha_bar = self.probability_flow.alpha_bar_at(s).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        a, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if self.cfg.prediction is Prediction.x0:
            return (x - a * prediction) / sigma
        return sigma * x + a * prediction

    @property
    def probability_flow(self) -> VPProbabilityFlow:
        return VPProbabilityFlow.of_steps(self.noise_prediction, self.diffusion.alpha_bar)

    def evaluation_text(self, final: bool) -> str:
        text = (f"variational bound, all T={self.timesteps} steps" if final and self.cfg.full_bound
                else "variational bound, sampled t")
        ode = final and self.cfg.ode_likelihood
        return text + (" and the probability-flow ODE likelihood" if ode else "")

    @property
    def final_cost(self) -> float:
        # T forward passes per image; a forward pass costs about a third of a training step (with backward)
        return (1.0 + self.timesteps / 3 if self.cfg.full_bound else 1.0) + self.ode_cost

    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, Tensor]:
        x0 = self.scale(batch.x)
        if final and self.cfg.full_bound:
            out = self.full_bound(x0, batch.y)
        else:
            out = self.sampled_bound(x0, batch.y)
        out["bits_per_dim"] = bits_per_dim(out["nll_nats"], self.data.num_dims)
        return out | (self.ode_metrics(batch) if final else {})

    def metric_notes(self) -> list[str]:
        d, cfg, T = self.data, self.cfg, self.timesteps
        data = f"{d.levels}-level images scaled to [-1, 1] (bins of width 2/{d.levels - 1}, outer two open)"
        notes = [
            f"bits_per_dim and nll_nats: the variational bound on -log P(x) of the discrete {data}, in nats "
            f"per image and nats / (D ln 2), D = {d.num_dims}: L_0 (the discretized Gaussian decoder "
            f"-log p(x_0|x_1)) + "
            f"L_1..L_{T - 1} (KL(q(x_(t-1)|x_t,x_0) || p(x_(t-1)|x_t))) + L_T (KL(q(x_T|x_0) || N(0,I))); "
            f"T={T}, {cfg.schedule.value} schedule, {cfg.variance.value} variances, {cfg.prediction.value} "
            f"prediction, no clipping of the x_0 estimate"
            + (", conditioned on the label (no guidance)" if self.conditional else ""),
            "validation (and the test pass unless model.full_bound=true): the unbiased estimate "
            "L_T + T L_(t-1) with t uniform on 1..T, one draw of t and of the noise per image (one network "
            "call); *_stderr: the standard error of the mean over the images (their spread and that of t "
            "together)",
            f"mse (validation, and the test pass unless model.full_bound=true): the squared error per dimension "
            f"of the {cfg.prediction.value} prediction in that same network call, L_simple (the training "
            f"loss): a steadier curve than the one-t bound, whose terms span orders of magnitude across t",
        ]
        if cfg.full_bound:
            notes.append(f"test with model.full_bound=true: the full sum over all {T} steps (T network calls "
                         f"per image, one noise draw per step), split into decoder_nats, diffusion_nats and "
                         f"prior_nats")
        if cfg.ode_likelihood:
            notes.append(self.ode_note("the first noise level (step 1; log alpha_bar linear between steps)",
                                       f"step {T}"))
        steps = min(cfg.sampling_steps, T)
        sampler = f"DDIM with eta={cfg.ddim_eta}" if cfg.sampler is Sampler.ddim else "ancestral"
        notes.append(f"samples: {sampler}, {steps} of the {T} steps"
                     + (f", guidance scale {cfg.guidance_scale}" if self.conditional else ""))
        return notes

    # --- sampling -------------------------------------------------------------------------------------------
    def draw(self, n: int, labels: Optional[Tensor], generator: Optional[torch.Generator],
             temperature: Optional[float]) -> Tensor:
        """Images in [0, 1] on the data's levels, from S = min(sampling_steps, T) steps of the chosen
        sampler."""
        cfg = self.cfg
        chain = self.diffusion.respaced(min(cfg.sampling_steps, self.timesteps))
        shape = (n, self.data.channels, self.data.height, self.data.width)
        denoiser = self.denoiser(chain, labels)
        where = {"generator": generator, "device": self.device, "dtype": next(self.parameters()).dtype}
        if cfg.sampler is Sampler.ddim:
            x = ddim_sample(denoiser, chain, shape, eta=cfg.ddim_eta, clip=cfg.clip_denoised, **where)
        else:
            x = ancestral_sample(denoiser, chain, shape, clip=cfg.clip_denoised, **where)
        levels = self.data.levels
        return ((x.clamp(-1, 1) + 1) / 2 * (levels - 1)).round() / (levels - 1)
