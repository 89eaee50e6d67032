"""RealNVP (Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", 2017), with NICE's additive
coupling (Dinh, Krueger & Bengio, 2015) as `model.coupling=additive`.

The multi-scale architecture: at every scale but the last, three checkerboard couplings, a squeeze, three
channel-wise couplings, and half of the channels factored out as latents; the last scale has four
checkerboard couplings. Each coupling is preceded by an ActNorm (exact in both directions). The prior on
all latents is a standard normal.

The likelihood is computed on the discrete images x in {0..L-1}^D (L = 256 for 8-bit data):
  u = (x + noise) / L,       noise ~ U[0, 1)^D       uniform dequantization, then scaling to [0, 1]
  y = logit(alpha + (1 - 2 alpha) u)                 the logit transform (log-det included)
  z, log_det = flow(y)
  -log P(x) <= -log N(z) - log_det - log_det_logit + D ln L   (Jensen: an upper bound on the discrete NLL)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from gentrain.data.schemas import DataInfo
from gentrain.data.batches import Batch
from gentrain.errors import ConfigError
from gentrain.metrics import dequantized_nll_nats
from gentrain.models.likelihood import LikelihoodModel
from gentrain.models.schemas.realnvp import CouplingType, RealNVPConfig
from gentrain.nn import ActNorm, Coupling, CouplingMask, LogitTransform, squeeze, standard_normal_log_prob, unsqueeze


class FlowSequence(nn.ModuleList):
    """Invertible layers applied in order; log-dets add up."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self:
            x, step_log_det = layer(x)
            log_det = log_det + step_log_det
        return x, log_det

    def inverse(self, y: Tensor) -> Tensor:
        for layer in reversed(self):
            y = layer.inverse(y)
        return y


class Squeeze(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return squeeze(x), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return unsqueeze(y)


class MultiScaleFlow(nn.Module):
    """y (B, C, H, W) -> z (B, D): the latents factored out at each scale, flattened and concatenated."""

    def __init__(self, channels: int, height: int, width: int, num_scales: int, hidden: int, blocks: int, affine: bool):
        super().__init__()

        def step(c: int, mask: CouplingMask, parity: int) -> list[nn.Module]:
            return [ActNorm(c), Coupling(c, mask, parity, hidden, blocks, affine)]

        self.scales = nn.ModuleList()
        self.factored_shapes: list[tuple[int, int, int]] = []  # per scale, the latents it factors out
        c, h, w = channels, height, width
        for _ in range(num_scales - 1):
            layers = [m for parity in (0, 1, 0) for m in step(c, CouplingMask.checkerboard, parity)]
            layers.append(Squeeze())
            c, h, w = 4 * c, h // 2, w // 2
            layers += [m for parity in (0, 1, 0) for m in step(c, CouplingMask.channel, parity)]
            self.scales.append(FlowSequence(layers))
            c //= 2
            self.factored_shapes.append((c, h, w))
        self.final = FlowSequence([m for parity in (0, 1, 0, 1) for m in step(c, CouplingMask.checkerboard, parity)])
        self.final_shape = (c, h, w)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        log_det = y.new_zeros(y.shape[0])
        latents = []
        for scale in self.scales:
            y, scale_log_det = scale(y)
            factored, y = y.chunk(2, dim=1)
            latents.append(factored.flatten(1))
            log_det = log_det + scale_log_det
        y, final_log_det = self.final(y)
        latents.append(y.flatten(1))
        return torch.cat(latents, dim=1), log_det + final_log_det

    def inverse(self, z: Tensor) -> Tensor:
        shapes = self.factored_shapes + [self.final_shape]
        pieces = z.split([math.prod(s) for s in shapes], dim=1)
        y = self.final.inverse(pieces[-1].view(-1, *self.final_shape))
        for scale, piece, shape in zip(reversed(self.scales), reversed(pieces[:-1]), reversed(self.factored_shapes)):
            y = scale.inverse(torch.cat([piece.view(-1, *shape), y], dim=1))
        return y


class RealNVP(LikelihoodModel, config=RealNVPConfig):
    """A multi-scale RealNVP (or NICE-style additive) flow on logit-transformed, dequantized images."""

    has_temperature = True

    def __init__(self, cfg: RealNVPConfig, data: DataInfo):
        super().__init__(data)
        factor = 2 ** (cfg.num_scales - 1)
        if data.height % factor or data.width % factor or min(data.height, data.width) // factor < 2:
            raise ConfigError(
                f"model.num_scales={cfg.num_scales} squeezes {cfg.num_scales - 1} time(s), so image sides must be "
                f"divisible by {factor} and leave at least 2 pixels; got {data.height}x{data.width}. Lower "
                f"model.num_scales or resize with dataset.image_size"
            )
        self.cfg = cfg
        self.logit = LogitTransform(cfg.logit_alpha)
        self.flow = MultiScaleFlow(
            data.channels, data.height, data.width, cfg.num_scales, cfg.hidden_channels, cfg.residual_blocks,
            affine=cfg.coupling is CouplingType.affine,
        )

    # --- the bijection u <-> z ------------------------------------------------------------------------
    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Images u in [0, 1] (B, C, H, W) -> latents z (B, D) and log |det dz/du| (B,), logit transform included."""
        y, logit_log_det = self.logit(u)
        z, flow_log_det = self.flow(y)
        return z, logit_log_det + flow_log_det

    def inverse(self, z: Tensor) -> Tensor:
        """Latents (B, D) -> images u in [0, 1] (B, C, H, W)."""
        return self.logit.inverse(self.flow.inverse(z))

    # --- objective (training and evaluation: models/likelihood.py) ----------------------------------------
    def nll_nats(self, batch: Batch) -> Tensor:
        """Upper bound on -log P(x) of the discrete images in nats, (B,), from one dequantization sample."""
        x = batch.x
        u = (x.float() + torch.rand(x.shape, device=x.device)) / self.data.levels
        z, log_det = self(u)
        log_density = standard_normal_log_prob(z) + log_det
        return dequantized_nll_nats(log_density, self.data.num_dims, self.data.levels)

    def metric_notes(self) -> list[str]:
        d = self.data
        return [
            f"bits_per_dim is an upper bound on the NLL of the discrete {d.levels}-level images (uniform "
            f"dequantization, one noise sample per image per evaluation): -log p(u) of u = (x + noise)/{d.levels} "
            f"+ D ln {d.levels} for the scaling to [0, 1], with the log-det of the logit transform "
            f"(alpha={self.cfg.logit_alpha}) and of every flow layer included; bits/dim = nats / (D ln 2), "
            f"D = {d.num_dims}; nll_nats: the same bound in nats per image",
        ]

    # --- sampling -------------------------------------------------------------------------------------
    def draw(self, n: int, labels: Optional[Tensor], generator: Optional[torch.Generator],
             temperature: Optional[float]) -> Tensor:
        """Images from latents z ~ N(0, T^2 I) (T = model.temperature by default), quantized to the data's levels
        and scaled to [0, 1]."""
        t = self.cfg.temperature if temperature is None else temperature
        z = t * torch.randn(n, self.data.num_dims, generator=generator, device=self.device)
        u = self.inverse(z)
        levels = self.data.levels
        return (u * levels).floor().clamp(0, levels - 1) / (levels - 1)

    @torch.no_grad()
    def visualize(self, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        grids = {"samples": self.sample(len(batch), generator=generator)}
        temperatures = (0.5, 0.7, 0.85, 1.0)
        columns = 8
        rows = [self.sample(columns, generator=generator, temperature=t) for t in temperatures]
        grids["samples_by_temperature"] = torch.stack(rows)  # one row per temperature, lowest first
        return grids
