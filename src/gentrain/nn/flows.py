"""Invertible layers for normalizing flows (RealNVP, NICE), each with its exact log-determinant.

Every layer maps data-side tensors to latent-side tensors in `forward(x) -> (y, log_det)`, with `log_det`
the per-example log |det dy/dx|, shape (B,), and undoes it in `inverse(y) -> x`.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import Tensor, nn


def squeeze(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block of a channel becomes 4 channels (volume preserving)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """The inverse of `squeeze`."""
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


def checkerboard(height: int, width: int, parity: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(1, 1, H, W) mask: 1 where (i + j) % 2 == parity, the half a checkerboard coupling leaves unchanged."""
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    return ((rows + cols) % 2 == parity).to(dtype).view(1, 1, height, width)


class LogitTransform(nn.Module):
    """u in [0, 1] -> logit(alpha + (1 - 2 alpha) u), the RealNVP preprocessing.

    alpha keeps the logit finite at the edges of the unit cube; the log-det per dimension is
    log(1 - 2 alpha) - log(s) - log(1 - s), with s = alpha + (1 - 2 alpha) u.
    """

    def __init__(self, alpha: float):
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1.0 - 2.0 * self.alpha) * u
        y = torch.log(s) - torch.log1p(-s)
        log_det = math.log(1.0 - 2.0 * self.alpha) - torch.log(s) - torch.log1p(-s)
        return y, log_det.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)


class ActNorm(nn.Module):
    """Per-channel affine normalisation y = (x + bias) * exp(log_scale) (Glow).

    The first forward pass in training mode sets bias and log_scale so that that batch comes out with zero
    mean and unit variance per channel; after that they are ordinary parameters. Unlike batch norm it is the
    same function in training and evaluation, so it inverts exactly in both. Under torchrun the statistics are
    those of the global batch (averaged over the processes' equal shards), so every process starts the same.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))  # saved with checkpoints
        # A Python mirror of the buffer, so that forward() reads no tensor: that would be a device sync per
        # layer and step on a GPU, and a branch torch.compile cannot trace.
        self.needs_init = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.needs_init = not bool(self.initialized)

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        moments = torch.stack([x.mean(dim=(0, 2, 3), keepdim=True), x.pow(2).mean(dim=(0, 2, 3), keepdim=True)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(moments)
            moments /= torch.distributed.get_world_size()
        mean, mean_sq = moments
        n = x.numel() // x.shape[1]  # values per channel, for the unbiased variance (as x.std)
        std = ((mean_sq - mean.pow(2)).clamp_min(0) * n / max(n - 1, 1)).sqrt()
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)
        self.needs_init = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and self.needs_init:
            self._initialize(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        log_det = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, log_det.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class CouplingNet(nn.Module):
    """The ResNet that computes a coupling's scale and shift from the half it leaves unchanged (RealNVP).

    Its last convolution starts at zero, so every coupling starts as the identity. Batch norm inside this
    network needs no inverse: the coupling feeds it the unchanged half, the same in both directions.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, blocks: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            *[ResidualBlock(width) for _ in range(blocks)],
            nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CouplingMask(Enum):
    checkerboard = "checkerboard"  # spatial: pixels with (i + j) % 2 == parity stay unchanged
    channel = "channel"  # the first (parity 0) or second (parity 1) half of the channels stays unchanged


class Coupling(nn.Module):
    """An affine coupling layer y_b = x_b * exp(s(x_a)) + t(x_a), y_a = x_a (RealNVP); with `affine=False`
    the scale is dropped and the layer is NICE's volume-preserving additive coupling (log-det 0).

    s = scale * tanh(raw) with a learned per-channel scale, which keeps the first steps of training stable.
    """

    def __init__(self, channels: int, mask: CouplingMask, parity: int, width: int, blocks: int, affine: bool):
        super().__init__()
        self.mask, self.parity, self.affine = mask, parity, affine
        if mask is CouplingMask.checkerboard:
            in_channels = out_channels = channels
        else:
            if channels % 2:
                raise ValueError(f"a channel-wise coupling needs an even number of channels, got {channels}")
            in_channels = out_channels = channels // 2
        self.net = CouplingNet(in_channels, (2 if affine else 1) * out_channels, width, blocks)
        self.scale = nn.Parameter(torch.ones(1, out_channels, 1, 1)) if affine else None

    def _shift_and_log_scale(self, unchanged: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.net(unchanged)
        if not self.affine:
            return out, None
        shift, raw = out.chunk(2, dim=1)
        return shift, self.scale * torch.tanh(raw)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask is CouplingMask.checkerboard:
            keep = checkerboard(x.shape[2], x.shape[3], self.parity, x.device, x.dtype)
            shift, log_scale = self._shift_and_log_scale(x * keep)
            change = 1.0 - keep
            if log_scale is None:
                return x + change * shift, x.new_zeros(x.shape[0])
            log_scale = change * log_scale
            y = x * torch.exp(log_scale) + change * shift
            return y, log_scale.flatten(1).sum(1)
        unchanged, changed = self._split(x)
        shift, log_scale = self._shift_and_log_scale(unchanged)
        if log_scale is None:
            return self._join(unchanged, changed + shift), x.new_zeros(x.shape[0])
        return self._join(unchanged, changed * torch.exp(log_scale) + shift), log_scale.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        if self.mask is CouplingMask.checkerboard:
            keep = checkerboard(y.shape[2], y.shape[3], self.parity, y.device, y.dtype)
            shift, log_scale = self._shift_and_log_scale(y * keep)
            change = 1.0 - keep
            x = y - change * shift
            return x if log_scale is None else x * torch.exp(-change * log_scale)
        unchanged, changed = self._split(y)
        shift, log_scale = self._shift_and_log_scale(unchanged)
        x_changed = changed - shift
        if log_scale is not None:
            x_changed = x_changed * torch.exp(-log_scale)
        return self._join(unchanged, x_changed)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first, second = x.chunk(2, dim=1)
        return (first, second) if self.parity == 0 else (second, first)

    def _join(self, unchanged: Tensor, changed: Tensor) -> Tensor:
        return torch.cat([unchanged, changed] if self.parity == 0 else [changed, unchanged], dim=1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over all but the first dimension -> (B,)."""
    return -0.5 * (z.pow(2) + math.log(2.0 * math.pi)).flatten(1).sum(1)

