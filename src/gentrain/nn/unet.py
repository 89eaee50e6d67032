"""The U-Net of diffusion and flow-matching models (Ho et al. 2020, after PixelCNN++ and Wide ResNets).

Residual blocks (GroupNorm, SiLU, 3x3 convolutions, dropout) with the time embedding added in each block,
self-attention at the resolutions listed in `attention_resolutions` and in the middle, and a skip connection
from every block of the way down to one on the way up. The image side sets the resolutions: each level but
the last halves the side while it is even (28 -> 14 -> 7 -> 7 for MNIST, 32 -> 16 -> 8 -> 4 for CIFAR-10),
so any side works. With `num_classes` the network also takes labels; label `num_classes` is the "null" label
that classifier-free guidance trains with (and that `labels=None` means).

`forward(x, t, labels)` takes the time as floats (B,), on whatever scale the caller chooses: step indices
0..T-1 for DDPM, or continuous times scaled by the caller (e.g. 1000 t); the sinusoidal embedding has
frequencies down to 1/10000, so it resolves unit steps over a range of about a thousand.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (Ho et al.), fewer for small channel counts: at least 4 channels a group, as
    a group of one channel would normalise away the time embedding that a block adds to each channel."""
    groups = max(g for g in range(1, min(32, max(1, channels // 4)) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer position encoding of times t (B,) -> (B, dim): cos and sin of t / max_period^(k / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(emb, (0, dim % 2))


class FourierTimeEmbedding(nn.Module):
    """Random Fourier features of t (Tancik et al. 2020; Song et al.'s score SDEs): cos and sin of 2 pi w t
    with fixed w ~ N(0, scale^2). For continuous times in [0, 1] without rescaling."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("weight", torch.randn(dim // 2) * scale)  # a buffer: saved, never trained
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        angles = 2 * math.pi * t.float()[:, None] * self.weight[None]
        return F.pad(torch.cat([torch.cos(angles), torch.sin(angles)], dim=1), (0, self.dim % 2))


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (Ho et al.)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels cannot be split into {heads} attention heads")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).view(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C/heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """x (B, in_channels, S, S), t (B,) floats, labels (B,) ints or None -> (B, out_channels, S, S).

    `channel_mult[i]` times `base_channels` feature maps at level i; `attention_resolutions` lists the sides
    (e.g. 16 for CIFAR-10) where blocks get self-attention; `time_embedding` is "sinusoidal" or "fourier";
    `input_fourier_exponents` (VDM) appends sin and cos of 2^n pi x for each n to the input channels, so that
    the network sees the fine detail of the 8-bit grid.
    """

    def __init__(self, in_channels: int, out_channels: int, image_size: int, base_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (16,), dropout: float = 0.0,
                 num_classes: Optional[int] = None, attention_heads: int = 1,
                 time_embedding: str = "sinusoidal", input_fourier_exponents: Sequence[int] = ()):
        super().__init__()
        if time_embedding not in ("sinusoidal", "fourier"):
            raise ValueError(f"time_embedding must be 'sinusoidal' or 'fourier', got {time_embedding!r}")
        self.image_size = image_size
        self.num_classes = num_classes
        self.fourier_exponents = tuple(input_fourier_exponents)
        emb_dim = 4 * base_channels
        self.time_embedding = time_embedding
        self.fourier_time = FourierTimeEmbedding(base_channels) if time_embedding == "fourier" else None
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        # one more row than classes: the "null" label of classifier-free guidance
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

        first = in_channels * (1 + 2 * len(self.fourier_exponents))
        self.conv_in = nn.Conv2d(first, base_channels, 3, padding=1)
        attention = set(attention_resolutions)

        def block(c_in: int, c_out: int, res: int) -> nn.ModuleList:
            layers = [ResBlock(c_in, c_out, emb_dim, dropout)]
            if res in attention:
                layers.append(AttentionBlock(c_out, attention_heads))
            return nn.ModuleList(layers)

        self.down = nn.ModuleList()  # blocks and downsamplers, in order; each output is a skip
        skips = [base_channels]
        c, res = base_channels, image_size
        self.resolutions = []  # the side at each level
        downsampled = []  # whether level i halves the side on its way down
        for level, mult in enumerate(channel_mult):
            self.resolutions.append(res)
            for _ in range(num_res_blocks):
                self.down.append(block(c, base_channels * mult, res))
                c = base_channels * mult
                skips.append(c)
            halve = level < len(channel_mult) - 1 and res % 2 == 0
            downsampled.append(halve)
            if halve:  # an odd side (7) stays: upsampling could not give it back
                self.down.append(Downsample(c))
                skips.append(c)
                res //= 2
        if attention and not attention & set(self.resolutions):  # a typo, or sides meant for other images
            log.warning("attention_resolutions %s match none of the U-Net's sides %s: self-attention only in "
                        "its middle block", sorted(attention), ", ".join(map(str, self.resolutions)))
        self.middle = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), AttentionBlock(c, attention_heads),
                                     ResBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            res = self.resolutions[level]
            # one block per skip of this level, plus the one that entered it (conv_in or a downsampler)
            entered = level == 0 or downsampled[level - 1]
            for _ in range(num_res_blocks + entered):
                self.up.append(block(c + skips.pop(), base_channels * channel_mult[level], res))
                c = base_channels * channel_mult[level]
            if level > 0 and downsampled[level - 1]:
                self.up.append(Upsample(c))
        self.out = nn.Sequential(group_norm(c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # starts predicting 0: the mean of the noise
        nn.init.zeros_(self.out[-1].bias)

    @property
    def null_label(self) -> int:
        """The label that means "no class" (classifier-free guidance)."""
        if not self.num_classes:
            raise ValueError("an unconditional U-Net has no labels")
        return self.num_classes

    def drop_labels(self, labels: Tensor, rate: float) -> Tensor:
        """Labels with a share `rate` of them replaced by the null label: training them teaches the unconditional
        model that classifier-free guidance needs."""
        if rate <= 0:
            return labels
        dropped = torch.rand(labels.shape, device=labels.device) < rate
        return torch.where(dropped, torch.full_like(labels, self.null_label), labels)

    def embed(self, t: Tensor, labels: Optional[Tensor]) -> Tensor:
        if self.fourier_time is not None:
            emb = self.fourier_time(t)
        else:
            emb = sinusoidal_embedding(t, self.time_mlp[0].in_features)
        emb = self.time_mlp(emb.to(self.time_mlp[0].weight.dtype))
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full(t.shape, self.null_label, dtype=torch.long, device=t.device)
            emb = emb + self.label_emb(labels)
        elif labels is not None:
            raise ValueError("labels given to an unconditional U-Net (num_classes=None)")
        return emb

    def forward(self, x: Tensor, t: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.embed(t, labels).to(x.dtype)
        if self.fourier_exponents:
            angles = torch.cat([x * (2.0 ** n * math.pi) for n in self.fourier_exponents], dim=1)
            x = torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=1)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = run(layer, h, emb)
            skips.append(h)
        for layer in self.middle:
            h = run(layer, h, emb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = run(layer, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def run(layer: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
    """Apply a down/middle/up element: a list of a ResBlock and its attention, or a single layer."""
    layers = layer if isinstance(layer, nn.ModuleList) else [layer]
    for sub in layers:
        h = sub(h, emb) if isinstance(sub, ResBlock) else sub(h)
    return h
