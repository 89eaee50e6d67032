"""Shifted convolutions for PixelCNN++ (Salimans et al., 2017): causality from where the kernel sits rather
than from masks.

A "down" convolution reads the current row and the rows above it, centred on the current column; a
"down-right" one reads the current row and the rows above, from the current column and the columns to its
left. Neither ever reads a row below, and a down-right one never reads a column to the right. Fed with the
image shifted one row down (or one column right), their outputs see only pixels strictly before the current
one.

Strided versions halve the resolution: output row p reads input rows 2p - 1 and 2p (columns likewise), and
the transposed versions double it: output row r reads input row r // 2. So row p of a map at 1 / 2**l of the
image's resolution depends on the image's rows up to p * 2**l only (models/pixelcnnpp.py's sampler relies on
it). The zero padding happens inside the convolution, and the rows and columns that symmetric padding adds
past the causal ones are cropped from the output, a view (as masked.causal_conv does).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def concat_elu(x: Tensor) -> Tensor:
    """ELU of x and of -x, concatenated along the channels: a non-linearity that keeps both signs."""
    return F.elu(torch.cat([x, -x], dim=1))


_LAST: Optional[str] = None  # what shifted convolutions compute inside last_output(): None (everything)


@contextmanager
def last_output(part: str) -> Iterator[None]:
    """Inside, shifted convolutions compute only the last row of their output (part="row") or only its last
    pixel (part="pixel", down-right ones only), from the last rows and columns of their input that it reads:
    what the PixelCNN++ sampler needs of the windows it runs them on (the rest is known already)."""
    global _LAST
    before, _LAST = _LAST, part
    try:
        yield
    finally:
        _LAST = before


class ShiftedConv2d(nn.Conv2d):
    """A down (`right=False`, kernel width odd) or down-right (`right=True`) convolution, stride 1 or 2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], *, right: bool,
                 stride: int = 1):
        kh, kw = kernel_size
        if not right and kw % 2 == 0:
            raise ValueError("a down convolution is centred on the current column: its width must be odd")
        # Symmetric padding of kh - 1 rows (and kw - 1 or (kw - 1) // 2 columns); the output's first rows and
        # columns are then the causal ones.
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=(kh - 1, kw - 1 if right else (kw - 1) // 2))
        self.right = right

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        s = self.stride[0]
        if _LAST is None:
            return super().forward(x)[:, :, : (height + s - 1) // s, : (width + s - 1) // s]
        # The last kh rows (and kw columns) with the zeros of the border above (and to the left), unpadded.
        kh, kw = self.kernel_size
        pixel = _LAST == "pixel"
        if pixel and not self.right:
            raise ValueError("a down convolution reads columns to the right: it has no last pixel alone")
        x = x[:, :, -kh:, -kw:] if pixel else x[:, :, -kh:]
        missing = (max(0, kw - width) if pixel else 0, 0, max(0, kh - height), 0)
        if any(missing):
            x = F.pad(x, missing)
        if pixel:  # one matrix product: conv2d's set-up costs far more than one pixel's arithmetic
            return F.linear(x.reshape(len(x), -1), self.weight.flatten(1), self.bias)[:, :, None, None]
        out = F.conv2d(x, self.weight, self.bias, self.stride, (0, self.padding[1]))
        return out[:, :, -1:, : (width + s - 1) // s]


class ShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Doubles the resolution: output (r, c) reads input row r // 2 and, for a down-right one, column c // 2
    (a down one: the columns whose kernel reaches c from either side)."""

    def __init__(self, in_channels: int, out_channels: int, *, right: bool):
        super().__init__(in_channels, out_channels, (2, 2 if right else 3), stride=2)
        self.right = right

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if _LAST == "pixel" and self.right and height == width == 1:  # the 2 x 2 pixels one input pixel gives
            out = F.linear(x.flatten(1), self.weight.flatten(1).t()).view(len(x), -1, 2, 2)
            return out + self.bias[:, None, None]
        left = 0 if self.right else 1
        return super().forward(x)[:, :, : 2 * height, left : left + 2 * width]


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution that computes only the last row or pixel inside last_output()."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if _LAST is None:
            return super().forward(x)
        if _LAST == "row":
            return super().forward(x[:, :, -1:])
        return F.linear(x[:, :, -1, -1], self.weight.flatten(1), self.bias)[:, :, None, None]


def shift_right(x: Tensor) -> Tensor:
    """Every column one right (zeros enter at the left); masked.shift_down moves rows."""
    return F.pad(x, (1, 0))[:, :, :, :-1]
