"""Causal (masked) convolutions for autoregressive image models: PixelCNN and Gated PixelCNN.

Pixels are generated in raster order and, inside a pixel, colour by colour (R -> G -> B). A convolution is
causal when its output at pixel (i, j) reads only pixels before (i, j) and, of pixel (i, j) itself, only
what the mask type allows:

- the feature channels are split into colour groups (`colour_groups`); at the current pixel, an output
  channel of colour c reads input channels of colours < c (mask A, the first layer) or <= c (mask B, every
  later layer). With a single colour group mask A reads nothing of the current pixel and mask B all of it,
  which is what a mixture output needs (the network must not see the current pixel at all);
- rows below the current one are never read, so kernels are stored without them: a "7x7 masked
  convolution" is a 4x7 kernel whose bottom row is cut at the current pixel. This is the same function as
  the square masked kernel with a third less work, and it means that cropping the input below row i leaves
  the outputs of rows <= i unchanged (the sampler relies on it).
"""

from __future__ import annotations

from enum import Enum
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskType(Enum):
    A = "A"  # the current pixel's own colour (and later ones) hidden: the first layer
    B = "B"  # the current pixel's own colour visible: layers after the first


def colour_groups(num_channels: int, colours: int, chunks: int = 1) -> Tensor:
    """The colour index of each of `num_channels` channels.

    The channels form `chunks` equal consecutive chunks (e.g. the two halves of a gated activation), and each
    chunk is split into `colours` near-equal contiguous blocks: with 768 = 3 x 256 softmax logits, channels
    0-255 are R, 256-511 G, 512-767 B, the channel-major layout of `distributions.Categorical`.
    """
    if num_channels % chunks:
        raise ValueError(f"{num_channels} channels do not split into {chunks} chunks")
    per_chunk = num_channels // chunks
    if per_chunk < colours:
        raise ValueError(f"{per_chunk} channels per chunk cannot hold {colours} colour groups")
    return (torch.arange(per_chunk) * colours // per_chunk).repeat(chunks)


def causal_mask(
    out_colours: Tensor, in_colours: Tensor, kernel_size: tuple[int, int], anchor: tuple[int, int], mask_type: MaskType
) -> Tensor:
    """A (out, in, kh, kw) 0/1 mask: taps before `anchor` (the current pixel) in raster order are open, taps
    after it closed, and the anchor itself open from colour groups before the output's (A) or up to it (B)."""
    kh, kw = kernel_size
    ai, aj = anchor
    rows = torch.arange(kh).view(kh, 1)
    cols = torch.arange(kw).view(1, kw)
    before = (rows < ai) | ((rows == ai) & (cols < aj))
    mask = before.float().expand(len(out_colours), len(in_colours), kh, kw).clone()
    out_c, in_c = out_colours.view(-1, 1), in_colours.view(1, -1)
    allowed = in_c < out_c if mask_type is MaskType.A else in_c <= out_c
    mask[:, :, ai, aj] = allowed.float()
    return mask


def causal_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], anchor: tuple[int, int]) -> Tensor:
    """A convolution whose output keeps the input's height and width, with the kernel tap `anchor` on the output
    pixel: it reads `anchor` rows above, `anchor[1]` columns to the left, the rest of the kernel's width to the
    right, and nothing below the current row.

    The zero padding happens inside the convolution (symmetric, as conv2d pads), and the rows and columns that
    symmetric padding adds beyond the causal ones are cropped from the output, a view: no activation is copied
    (an explicit pad cost 9% of a PixelCNN step and most of its extra peak memory), and no zero taps are computed
    (a full k x k kernel with its lower half masked would)."""
    kh, kw = weight.shape[-2:]
    top, left = anchor
    right = kw - 1 - left
    side = max(left, right)
    out = F.conv2d(x, weight, bias, padding=(top, side))
    height, width = x.shape[-2:]
    return out[:, :, :height, side - left : side - left + width]


def conv_at(x: Tensor, weight: Tensor, bias: Optional[Tensor], anchor: tuple[int, int], i: int, j: int) -> Tensor:
    """causal_conv's output at pixel (i, j) alone, (B, out): the kernel applied to the window it reads, as one
    matrix product (conv2d's set-up costs 20x more than the arithmetic for one pixel)."""
    kh, kw = weight.shape[-2:]
    top, left = anchor
    row, column = i - top, j - left
    window = x[:, :, max(row, 0) : i + 1, max(column, 0) : column + kw]
    missing = (max(0, -column), max(0, column + kw - x.shape[-1]), max(0, -row), 0)
    if any(missing):  # the window reaches over the image's border: the zeros causal_conv pads with
        window = F.pad(window, missing)
    return F.linear(window.flatten(1), weight.flatten(1), bias)


def pixelwise(module: nn.Module, x: Tensor) -> Tensor:
    """A pointwise module (1x1 convolutions, masked or not, activations, sequences of them) applied to one
    pixel's features (B, C), with matrix products."""
    if isinstance(module, nn.Sequential):
        for part in module:
            x = pixelwise(part, x)
        return x
    if isinstance(module, nn.Conv2d):
        weight = module.masked_weight() if isinstance(module, CausalConv2d) else module.weight
        return F.linear(x, weight.flatten(1), module.bias)
    return module(x)


class CausalConv2d(nn.Conv2d):
    """A masked convolution whose output keeps the input's height and width (`causal_conv`).

    `anchor` is the kernel tap that lands on the output pixel: the kernel reaches `anchor` rows above and
    `anchor[1]` columns to the left, and nothing below the current row.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        anchor: tuple[int, int],
        mask_type: MaskType,
        colours: int,
        *,
        out_chunks: int = 1,
    ):
        kh, kw = kernel_size
        if anchor[0] != kh - 1:
            raise ValueError("the current pixel must sit in the kernel's last row (rows below are never read)")
        super().__init__(in_channels, out_channels, kernel_size)
        self.anchor = anchor
        mask = causal_mask(
            colour_groups(out_channels, colours, out_chunks), colour_groups(in_channels, colours), kernel_size,
            anchor, mask_type,
        )
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return causal_conv(x, self.masked_weight(), self.bias, self.anchor)

    def masked_weight(self) -> Tensor:
        """weight * mask; without autograd (evaluation, sampling) computed once per version of the weights."""
        if torch.is_grad_enabled():
            return self.weight * self.mask
        key = (self.weight.data_ptr(), self.weight._version, self.mask.data_ptr())
        if getattr(self, "_masked_key", None) != key:
            self._masked, self._masked_key = self.weight * self.mask, key
        return self._masked

    def at(self, x: Tensor, i: int, j: int, weight: Optional[Tensor] = None) -> Tensor:
        """The output at pixel (i, j) alone, (B, out), from the input map x: only the taps the kernel reads
        there need to hold their values (incremental sampling keeps such maps). `weight`: masked_weight(),
        computed once by a caller that calls this many times."""
        return conv_at(x, self.masked_weight() if weight is None else weight, self.bias, self.anchor, i, j)


def masked_square_conv(in_channels: int, out_channels: int, kernel: int, mask_type: MaskType,
                       colours: int) -> CausalConv2d:
    """The PixelCNN's k x k masked convolution (k odd), stored as its (k//2 + 1) x k upper part."""
    return CausalConv2d(in_channels, out_channels, (kernel // 2 + 1, kernel), (kernel // 2, kernel // 2),
                        mask_type, colours)


def pointwise_conv(in_channels: int, out_channels: int, colours: int, *, out_chunks: int = 1) -> CausalConv2d:
    """A 1x1 convolution with mask B: colour c reads colours <= c of the same pixel."""
    return CausalConv2d(in_channels, out_channels, (1, 1), (0, 0), MaskType.B, colours, out_chunks=out_chunks)


class VerticalConv(nn.Module):
    """The Gated PixelCNN's vertical stack convolution: the (k//2 + 1) x k rows ending at the current row.

    Its input must already lie strictly above each output row (the image shifted down by one row, or the
    previous vertical layer), so the result does too, and it can feed the horizontal stack of the same row
    without any mask: that is what removes the plain PixelCNN's blind spot.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, (kernel // 2 + 1, kernel))
        self.anchor = (kernel // 2, kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        return causal_conv(x, self.conv.weight, self.conv.bias, self.anchor)

    def row(self, x: Tensor, i: int) -> Tensor:
        """Output row i alone, (B, out, 1, W), from the rows of the input map x up to i."""
        top = self.anchor[0]
        window = x[:, :, max(0, i - top) : i + 1]
        if i < top:
            window = F.pad(window, (0, 0, top - i, 0))
        return F.conv2d(window, self.conv.weight, self.conv.bias, padding=(0, self.anchor[1]))


def shift_down(x: Tensor) -> Tensor:
    """Move every row one down (zeros enter at the top): row i then holds row i - 1."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def gated_activation(x: Tensor) -> Tensor:
    """tanh(first half) * sigmoid(second half) along the channels."""
    value, gate = x.chunk(2, dim=1)
    return torch.tanh(value) * torch.sigmoid(gate)
