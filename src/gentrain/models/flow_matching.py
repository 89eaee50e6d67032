"""Flow matching (Lipman et al., "Flow Matching for Generative Modeling", 2023), with rectified flow's
straight path (Liu et al. 2023) as model.sigma_min=0, and classifier-free guidance (Ho & Salimans 2021)
when conditional.

Images live in [-1, 1]. Noise x0 ~ N(0, I) at t = 0, data x1 at t = 1, and the conditional optimal-transport
path
    x_t = (1 - (1 - sigma_min) t) x0 + t x1,   u_t = x1 - (1 - sigma_min) x0,
on which the U-Net v(x, t) learns u_t by mean squared error. Samples carry noise from t = 0 to t = 1 along
dx/dt = v; the likelihood carries an image from t = 1 back to t = 0 with the divergence (gentrain/nn/ode.py).

The training images are dequantized as the likelihood's are, so that the network learns the density it is
scored on. The likelihood of the discrete images x in {0..L-1}^D:
    u = (x + noise) / L,  noise ~ U[0, 1)^D           uniform dequantization, scaling to [0, 1]
    y = 2 u - 1                                       the model's range: log |det| = D ln 2
    -log P(x) <= -log p(y) - D ln 2 + D ln L          (Jensen, as RealNVP's: an upper bound)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.metrics import bits_per_dim, dequantized_nll_nats
from gentrain.models.base import GenerativeModel, LossOutput
from gentrain.models.probability_flow import ProbeStandardError, ode_pass_cost
from gentrain.models.schemas.flow_matching import FlowMatchingConfig, ODESolver
from gentrain.nn.ode import ADAPTIVE_NFE_ESTIMATE, log_likelihood, solve
from gentrain.nn.unet import UNet

TIME_SCALE = 1000.0  # the U-Net embeds times on a scale of about a thousand (nn/unet.py)


class FlowMatching(ProbeStandardError, GenerativeModel, config=FlowMatchingConfig):
    """A U-Net velocity field trained by conditional flow matching; ODE sampling and ODE likelihoods."""

    likelihood_prefix = ""  # the ODE bound is this model's bits_per_dim
    progress_terms = ("fm_loss",)
    main_metric = "fm_loss"  # cheap at every validation; the ODE bound on bits/dim is the final test pass's
    standard_errors = ("bits_per_dim", "nll_nats")  # their means over the images they cover: <name>_stderr

    def __init__(self, cfg: FlowMatchingConfig, data: DataInfo):
        super().__init__(data)
        self.cfg = cfg
        self.conditional = cfg.conditional
        num_classes = self.require_classes(data) if cfg.conditional else None
        self.network = UNet(
            data.channels, data.channels, data.height, cfg.base_channels, cfg.channel_mult,
            cfg.num_res_blocks, cfg.attention_resolutions, cfg.dropout, num_classes=num_classes,
            attention_heads=cfg.attention_heads,
        )
        self.last_sampling_nfe: Optional[float] = None  # mean NFE per image of the latest draw (the notes)

    # --- the path and the velocity ----------------------------------------------------------------------
    def to_model_range(self, x: Tensor) -> Tensor:
        """Discrete images (B, C, H, W) -> dequantized y = 2 (x + noise) / L - 1 in [-1, 1]."""
        u = (x.float() + torch.rand(x.shape, device=x.device)) / self.data.levels
        return 2 * u - 1

    def velocity(self, x: Tensor, t: Tensor, labels: Optional[Tensor] = None,
                 guidance: float = 1.0) -> Tensor:
        """v(x, t) for times t (B,) in [0, 1]; with labels and guidance w != 1, the guided
        v_none + w (v_label - v_none) from one network call on both halves."""
        if labels is None or guidance == 1.0:
            return self.network(x, TIME_SCALE * t, labels)
        none = torch.full_like(labels, self.network.null_label)
        v = self.network(torch.cat([x, x]), TIME_SCALE * torch.cat([t, t]), torch.cat([labels, none]))
        v_label, v_none = v.chunk(2)
        return v_none + guidance * (v_label - v_none)

    def fm_loss(self, batch: Batch, labels: Optional[Tensor]) -> Tensor:
        """The conditional flow-matching loss per image (B,): mean squared error per dimension."""
        x1 = self.to_model_range(batch.x)
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device)
        s = t.view(-1, 1, 1, 1)
        xt = (1 - (1 - self.cfg.sigma_min) * s) * x0 + s * x1
        target = x1 - (1 - self.cfg.sigma_min) * x0
        return (self.velocity(xt, t, labels).float() - target).pow(2).flatten(1).mean(1)

    def loss(self, batch: Batch, step: int) -> LossOutput:
        labels = batch.y if self.conditional else None
        if labels is not None:
            labels = self.network.drop_labels(labels, self.cfg.label_dropout)
        loss = self.fm_loss(batch, labels).mean()
        return LossOutput(loss, {"fm_loss": loss.detach()})

    # --- evaluation -------------------------------------------------------------------------------------
    @property
    def divergence_probes(self) -> Optional[int]:
        """None (the exact divergence) for small images, else the number of Hutchinson probes."""
        return None if self.data.num_dims <= self.cfg.exact_divergence_max_dims else self.cfg.probes

    def solver_settings(self, solver: ODESolver, steps: int) -> dict:
        return {"solver": solver.value, "steps": steps, "rtol": self.cfg.rtol, "atol": self.cfg.atol}

    def ode_nll(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Upper bound on -log P(x) in nats (B,), the standard error of its trace estimate (B,), NFE (B,)."""
        labels = batch.y if self.conditional else None
        y = self.to_model_range(batch.x)
        # fp32 whatever trainer.precision: the solver's error control and the divergence need it
        with torch.autocast(y.device.type, enabled=False):
            result = log_likelihood(
                lambda x, t, labels=None: self.velocity(x, t, labels).float(), y, t_data=1.0, t_noise=0.0,
                probes=self.divergence_probes, condition=labels,
                **self.solver_settings(self.cfg.likelihood_solver, self.cfg.likelihood_steps),
            )
        dims = self.data.num_dims
        log_density_u = result.log_prob + dims * math.log(2.0)  # y = 2 u - 1
        return dequantized_nll_nats(log_density_u, dims, self.data.levels), result.std_error, result.nfe

    @property
    def final_cost(self) -> float:
        cfg = self.cfg
        if cfg.likelihood_solver is ODESolver.adaptive:
            nfe = ADAPTIVE_NFE_ESTIMATE
        else:
            nfe = cfg.likelihood_steps * (2 if cfg.likelihood_solver is ODESolver.heun else 1)
        return ode_pass_cost(nfe, self.divergence_probes, self.data.num_dims)

    def evaluation_text(self, final: bool) -> str:
        return "flow-matching loss and ODE bits/dim" if final else "flow-matching loss"

    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, Tensor]:
        out = {"fm_loss": self.fm_loss(batch, batch.y if self.conditional else None)}
        if final:
            nll, std_error, nfe = self.ode_nll(batch)
            out["nll_nats"], out["bits_per_dim"] = nll, bits_per_dim(nll, self.data.num_dims)
            out["ode_nfe"] = nfe.float()
            if self.divergence_probes is not None:
                out["bits_per_dim_probe_var"] = bits_per_dim(std_error, self.data.num_dims).pow(2)
        return out

    def metric_notes(self) -> list[str]:
        cfg, d = self.cfg, self.data
        notes = [
            f"fm_loss: the conditional flow-matching loss, the mean squared error per dimension between "
            f"v(x_t, t) and x1 - (1 - sigma_min) x0 on the path x_t = (1 - (1 - sigma_min) t) x0 + t x1 "
            f"(sigma_min={cfg.sigma_min}), one t ~ U[0, 1] and noise x0 per image (fixed seed in "
            f"evaluations); the validation metric, as the ODE likelihood costs too much for every evaluation",
        ]
        if cfg.likelihood_solver is ODESolver.adaptive:
            solver = f"the adaptive Dormand-Prince 5(4) solver (rtol={cfg.rtol}, atol={cfg.atol}, per image)"
        else:
            # Near t = 1 the field contracts each pixel into its 8-bit cell: few fixed steps miss that by bits
            # (Heun with 25 steps gave -1.3 bits/dim for an image the adaptive solver put at 1.5)
            solver = (f"{cfg.likelihood_solver.value} with {cfg.likelihood_steps} steps (NOT a reliable "
                      f"bound: a fixed-step solver's error is not controlled; use "
                      f"model.likelihood_solver=adaptive)")
        if self.divergence_probes is None:
            divergence = f"the exact divergence (D = {d.num_dims} <= model.exact_divergence_max_dims)"
        else:
            divergence = (
                f"Hutchinson's divergence estimate with {cfg.probes} Rademacher probes per image, fixed "
                f"along its trajectory (unbiased; bits_per_dim_probe_se: the root mean square of the images' "
                f"standard errors over the probes, the mean's is that over sqrt(images))")
        given = " of the class-conditional model given the label (no guidance)" if self.conditional else ""
        notes.append(
            f"test bits_per_dim and nll_nats (final pass): an upper bound on the NLL{given} of the discrete "
            f"{d.levels}-level images: uniform dequantization u = (x + noise)/{d.levels}, one noise sample "
            f"per image, y = 2u - 1 (log-det D ln 2) and D ln {d.levels} for the scaling to [0, 1]; log p(y) "
            f"from the ODE carried from the data (t = 1) to N(0, I) at t = 0 by {solver} with {divergence}; "
            f"bits_per_dim_stderr (nll_nats_stderr): the standard error of the mean over the images it "
            f"covers (their spread, dequantization and probes together); ode_nfe: the mean velocity "
            f"evaluations per image; bits/dim = nats / (D ln 2), D = {d.num_dims}")
        if cfg.solver is ODESolver.adaptive:
            how, nfe = f"(rtol={cfg.rtol}, atol={cfg.atol})", self.last_sampling_nfe
        else:
            how, nfe = f"with {cfg.steps} steps", cfg.steps * (2 if cfg.solver is ODESolver.heun else 1)
        sampling = f"samples: noise at t = 0 carried to t = 1 by {cfg.solver.value} {how}"
        if nfe is not None:
            sampling += f", NFE {nfe:g} per image"
        if self.conditional and cfg.guidance_scale != 1.0:
            sampling += (f", classifier-free guidance scale {cfg.guidance_scale} (each evaluation runs the "
                         f"network on the labelled and the unlabelled half)")
        return notes + [sampling]

    # --- sampling ---------------------------------------------------------------------------------------
    def draw(self, n: int, labels: Optional[Tensor], generator: Optional[torch.Generator],
             temperature: Optional[float]) -> Tensor:
        """Noise at t = 0 carried to t = 1, quantized to the data's levels and scaled to [0, 1]."""
        d = self.data
        noise = torch.randn(n, d.channels, d.height, d.width, generator=generator, device=self.device)
        with torch.autocast(noise.device.type, enabled=False):
            guided = lambda x, t, labels=None: self.velocity(x, t, labels, self.cfg.guidance_scale).float()
            solution = solve(guided, noise, 0.0, 1.0, condition=labels,
                             **self.solver_settings(self.cfg.solver, self.cfg.steps))
        self.last_sampling_nfe = float(solution.nfe.float().mean())
        u = (solution.x + 1) / 2
        return (u * d.levels).floor().clamp(0, d.levels - 1) / (d.levels - 1)
